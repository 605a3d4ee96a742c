"""The README's `inferline stats` / `inferline report` examples, run as written (only the metrics
port changes, and HOME points at seeded logs). The live `inferline stats` is test_stats_tmux.py;
the --prometheus line needs a Prometheus on 9090 and is test_report_prometheus.py's command."""

import os
import re
import subprocess
from datetime import datetime, timezone

from report.logs_helpers import write_logs
from report.stats_helpers import Load, serve

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


def commands() -> list:
    with open(README, encoding="utf-8") as f:
        found = [b for b in re.findall(r"```sh\n(.*?)```", f.read(), flags=re.S) if "inferline report --since" in b]
    assert len(found) == 1
    return [line.split("#")[0].strip() for line in found[0].splitlines()]


def test_readme_stats_once_and_report_lines(tmp_path):
    once = next(c for c in commands() if c.startswith("inferline stats --once"))
    report = next(c for c in commands() if c.startswith("inferline report") and "--prometheus" not in c)
    server = serve(tmp_path)
    load = None
    try:
        load = Load(server)
        done = subprocess.run(f"{once} --url http://127.0.0.1:{server.control}", shell=True, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "digits-mlp" in done.stdout and "over the last 2." in done.stdout, done
    finally:
        if load is not None:
            load.stop()
        assert server.stop() == 0
    write_logs(tmp_path / ".inferline" / "logs", datetime.now(timezone.utc), days=1)
    done = subprocess.run(report, shell=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "wrote report.html: 5 of 6 plots drawn; models in the logs: digits-logreg, digits-mlp\n"
    assert (tmp_path / "report.html").stat().st_size > 10_000
