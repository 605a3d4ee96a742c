"""`inferline stats --once` against a real `inferline serve` under load, and its one-line errors."""

import re
import subprocess
import sys
import time

from report.stats_helpers import Load, serve

ROW = re.compile(r"│\s*(\S+)\s*│\s*(\d+)\s*│\s*([\d.–]+)\s*│\s*([\d.–]+)\s*│\s*([\d.–]+)\s*│\s*([\d.%–]+)\s*│")


def stats(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "inferline", "stats", *args], capture_output=True, text=True,
                          timeout=timeout)


def table_rows(text: str) -> dict:
    """{(model, version): (req/s, p50 ms, p99 ms, errors)} from the printed table."""
    return {(m.group(1), m.group(2)): m.groups()[2:] for m in ROW.finditer(text)}


def test_once_prints_every_version_with_rates_from_the_load(tmp_path):
    server = serve(tmp_path)
    load = None
    try:
        load = Load(server)
        time.sleep(1.0)
        done = stats("--once", "--interval", "2", "--url", f"http://127.0.0.1:{server.control}")
        client_rate = load.rate()
        load.stop()
        assert done.returncode == 0, done.stderr
        found = table_rows(done.stdout)
        assert set(found) == {("digits-mlp", "1"), ("digits-logreg", "1")}, done.stdout
        rate, p50, p99, errors = found[("digits-mlp", "1")]
        assert 0.5 * client_rate <= float(rate) <= 1.5 * client_rate, (rate, client_rate, done.stdout)
        # The core's time is part of the client's; a bucket is at most 25% wide.
        assert 0 < float(p50) <= float(p99) <= 1e3 * max(load.latencies) * 1.25, done.stdout
        assert errors == "0.0%"
        assert found[("digits-logreg", "1")] == ("0.0", "–", "–", "–")  # served nothing: no ratios, no p99
        assert "over the last 2." in done.stdout
    finally:
        if load is not None:
            load.stop()
        assert server.stop() == 0


def test_unreachable_server_and_bad_interval_are_one_line_errors(tmp_path):
    from server_fixtures import free_port
    port = free_port()
    done = stats("--once", "--url", f"127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot scrape http://127.0.0.1:{port}/metrics: [Errno 111] Connection refused"
    done = stats("--once", "--interval", "0")
    assert done.returncode == 1 and done.stderr.startswith("error: --interval must be > 0")
