"""`inferline report` from the inference logs alone: the aggregates equal numpy's over the records
in range (only the dates in range are read), every plot that the logs can feed is drawn and not
blank, the command's one-line errors."""

import base64
import io
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.compute as pc
import pytest

from inferline.report.build import build_report, parse_since
from inferline.report.logs import aggregate, bin_edges, read_inference
from report.logs_helpers import fixed_end, write_logs


def in_range(table, start, end):
    ts = table.column("ts")
    return table.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, end)))


def test_aggregates_over_the_range_equal_numpy(tmp_path):
    end = fixed_end()
    truth = write_logs(tmp_path, end, days=4)
    start = end - timedelta(days=2)
    # A file that is not Parquet in a partition out of range: never opened (dates prune the read).
    old = tmp_path / "inference" / f"date={(end - timedelta(days=9)).date()}" / "model=digits-mlp"
    old.mkdir(parents=True)
    (old / "part-0-broken.parquet").write_bytes(b"not parquet")
    table = read_inference(str(tmp_path), start, end)
    per_model = aggregate(table, bin_edges(start, end))
    for model in ("digits-mlp", "digits-logreg"):
        rows = in_range(truth[model], start, end)
        assert per_model[model].records == rows.num_rows > 0
        samples = rows.filter(pc.equal(rows.column("kind"), "sample"))
        latency = samples.column("latency_ms").to_numpy()
        tot = per_model[model].totals
        assert tot["p99_ms"] == pytest.approx(np.percentile(latency, 99))
        assert tot["fallback_ratio"] == pytest.approx(np.mean(samples.column("fallback_reason").is_valid().to_numpy(
            zero_copy_only=False)))
        rate = per_model[model].rate
        assert np.sum(rate.values * np.diff(rate.edges)) == pytest.approx(samples.num_rows)
    mlp = in_range(truth["digits-mlp"], start, end).to_pydict()
    pairs = [a for a, k in zip(mlp["agree"], mlp["kind"]) if k == "canary_pair"]
    assert per_model["digits-mlp"].totals["agreement:canary_pair"] == pytest.approx(np.mean(pairs))
    for arm in ("stable", "canary"):
        right = [p == lb for p, lb, a in zip(mlp["predicted"], mlp["label"], mlp["arm"]) if lb is not None and a == arm]
        assert per_model["digits-mlp"].totals[f"accuracy:{arm}"] == pytest.approx(np.mean(right))
    assert per_model["digits-mlp"].totals["accuracy:stable"] > per_model["digits-mlp"].totals["accuracy:canary"]
    assert "agreement:canary_pair" not in per_model["digits-logreg"].totals


def not_blank(png_b64: str) -> bool:
    """The PNG has drawn content: some pixels are far from white beyond the axes' frame."""
    import matplotlib.image
    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(png_b64)), format="png")[..., :3]
    dark = (pixels.mean(axis=2) < 0.8).mean()
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 0.3).mean()  # plotted lines are coloured
    return dark > 0.005 and coloured > 0.001


def test_report_from_the_logs_draws_every_plot_they_feed(tmp_path):
    end = fixed_end()
    write_logs(tmp_path / "logs", end, days=3)
    out = tmp_path / "report.html"
    found = build_report(parse_since("2d"), str(out), logs_root=str(tmp_path / "logs"), now=end)
    assert found["models"] == ["digits-logreg", "digits-mlp"]
    assert found["sections"] == {"Latency percentiles": True, "Throughput": True, "Batch fill": False,
                                 "Fallback rate": True, "Canary vs stable: agreement": True,
                                 "Canary vs stable: accuracy": True}
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5 and all(not_blank(i) for i in images)
    assert "not in the inference logs: give --prometheus URL" in page
    assert "2025-03-12 18:30:00 to 2025-03-14 18:30:00 UTC (2d)" in page
    assert re.search(r"<td>digits-mlp</td><td>\d+</td>", page)


def report(*args):
    return subprocess.run([sys.executable, "-m", "inferline", "report", *args], capture_output=True, text=True,
                          timeout=120)


def test_the_command_over_todays_logs_and_its_errors(tmp_path):
    write_logs(tmp_path / "logs", datetime.now(timezone.utc), days=2)
    out = tmp_path / "r.html"
    done = report("--since", "3d", "--out", str(out), "--logs", str(tmp_path / "logs"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out}: 5 of 6 plots drawn; models in the logs: digits-logreg, digits-mlp\n"
    done = report("--since", "yesterday", "--out", str(out))
    assert done.returncode == 1
    assert done.stderr == "error: --since wants a duration like 30m, 6h, 1d or 2w, not 'yesterday'\n"
    done = report("--out", str(out), "--logs", str(tmp_path / "logs"), "--prometheus", "http://127.0.0.1:1")
    assert done.returncode == 1 and done.stderr.startswith("error: cannot query Prometheus at http://127.0.0.1:1")
    empty = report("--since", "1d", "--out", str(out), "--logs", str(tmp_path / "none"))
    assert empty.returncode == 0 and "0 of 6 plots drawn; models in the logs: none" in empty.stdout
    assert "no inference logs under" in out.read_text()
    assert os.path.getsize(out) < 50_000
