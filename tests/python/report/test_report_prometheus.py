"""`inferline report --prometheus URL` over a short real run: a real Prometheus (the fixtures of
tests/python/server/test_metrics_prometheus.py, with the shipped recording rules) scrapes a real
`inferline serve` under load with a canary; the report draws every Prometheus plot, non-empty.

Without the prometheus binary the test skips, except under CI, where that is a failure."""

import math
import re
import subprocess
import sys
import time

from report.test_report_logs import not_blank
from server.test_metrics_prometheus import Prometheus, binary, canary_traffic, load, two_version_repository
from server_fixtures import ServerProcess, free_port


def test_report_from_a_real_prometheus_draws_every_rule(tmp_path):
    binary("prometheus")
    repo = two_version_repository(tmp_path)
    server = ServerProcess(repo, ports=(free_port(), free_port()))
    prom = None
    try:
        prom = Prometheus(tmp_path, server.control)
        prom.wait(lambda: prom.query('up{job="inferline"} == 1'), 30, "the first scrape")
        load(server, 200, clients=2)
        canary_traffic(server, prom, 60)
        for rule in ("model_version:inferline_request_duration_seconds:p99_rate5m",
                     "model:inferline_canary_agreement:ratio_rate5m"):
            prom.wait(lambda: any(math.isfinite(v) for _, v in prom.query(rule)), 30, rule)
        load(server, 100, clients=2)  # more points: the plots draw lines, not a dot or two
        time.sleep(4)
        out = tmp_path / "report.html"
        done = subprocess.run([sys.executable, "-m", "inferline", "report", "--since", "2m", "--out", str(out),
                               "--prometheus", f"http://127.0.0.1:{prom.port}", "--logs", str(tmp_path / "no-logs")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"wrote {out}: 6 of 7 plots drawn; models in the logs: none\n"
        page = out.read_text()
        images = re.findall(r'<h2>([^<]+)</h2>(?:<p class="note">[^<]*</p>)?<img alt="[^"]*" src="data:image/png;'
                            r'base64,([^"]+)"', page)
        assert [title for title, _ in images] == ["Latency percentiles", "Throughput", "Batch fill", "Fallback rate",
                                                  "Error rate", "Canary vs stable: agreement"]
        assert all(not_blank(png) for _, png in images)
        assert "Canary vs stable: accuracy</h2>" in page  # needs labelled log records: none here
        row = re.search(r"<tr><td>digits-mlp:1</td><td>([\d.]+)</td><td>([\d.]+)</td><td>([\d.]+)%</td>", page)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0 and 0 < float(row.group(3)) <= 100, page[:3000]
    finally:
        if prom is not None:
            prom.close()
        assert server.stop() == 0
