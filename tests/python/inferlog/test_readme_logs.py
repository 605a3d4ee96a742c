"""The README's "Inference logs" example, run as written against a log a real data plane wrote."""

import os
import re
import subprocess
import sys
import time

import numpy as np

from inferline.inferlog import InferenceLog, LogStore
from inferline.service import Answer

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


def test_the_reading_example(tmp_path):
    with open(README, encoding="utf-8") as f:
        found = [b for b in re.findall(r"```python\n(.*?)```", f.read(), flags=re.S) if "pyarrow.dataset" in b]
    assert len(found) == 1
    ilog = InferenceLog(LogStore(str(tmp_path / ".inferline" / "logs")))
    for i in range(5):
        ilog.sample("digits-mlp", f"r{i}", {"pixels": np.zeros((1, 64), np.float32)},
                    Answer({"logits": np.arange(10, dtype=np.float32)[None]}, "digits-mlp", 1), time.perf_counter())
    ilog.sample("other", "x", {"x": np.zeros((1, 4), np.float32)}, Answer({"y": np.zeros((1, 4))}, "other", 1), 0.0)
    ilog.flush()
    out = subprocess.run([sys.executable, "-c", found[0]], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"5 \[[\d.e-]+, [\d.e-]+, [\d.e-]+\]\n", out.stdout), out.stdout
