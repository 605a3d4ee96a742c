"""`inferline bench` against a real `inferline serve` (demo models, plus a model with a fallback):
every protocol in closed and open loop, counts checked against the server's own statistics,
errors counted by status, .npz inputs, --json, --plot, --sweep. No assertion on speed."""

import json
import math
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from server_fixtures import FLAG, ServerProcess, flaky_package, make_repository, steady_package

SHORT = ["--warmup", "0.3", "--duration", "1.5", "--quiet"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    repo = make_repository(root, extra=[steady_package(root),
                                        flaky_package(root, fallback="steady",
                                                      breaker={"consecutive_failures": 0, "error_rate": 0})])
    srv = ServerProcess(repo)
    yield srv
    srv.stop()


def url(server, protocol):
    return f"http://127.0.0.1:{server.http}" if protocol == "rest" else f"127.0.0.1:{server.grpc}"


def bench(server, model, *args, protocol="grpc", check=True):
    cmd = [sys.executable, "-m", "inferline", "bench", model, "--protocol", protocol,
           "--url", url(server, protocol), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def run_json(server, model, *args, protocol="grpc"):
    return json.loads(bench(server, model, "--json", *SHORT, *args, protocol=protocol).stdout)


def served(server, model):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/models/{model}/stats") as r:
        return sum(s["inference_count"] for s in json.loads(r.read())["model_stats"])


def sane(report):
    lat = report["latency_ms"]
    assert report["errors"] == {} and report["ok"] == report["requests"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert report["histogram"]["count"] == report["ok"]
    assert report["fallback_share"] == 0
    assert report["client_cpu_us_per_request"] > 0
    assert report["latency_over_time"] and sum(s["count"] for s in report["latency_over_time"]) == report["ok"]


def test_closed_loop_grpc_counts_what_the_server_served(server, tmp_path):
    before = served(server, "digits-mlp")
    plot = tmp_path / "over_time.png"
    report = run_json(server, "digits-mlp", "--concurrency", "8", "--procs", "2",
                      "--server-pid", str(server.proc.pid), "--plot", str(plot))
    sane(report)
    assert report["mode"] == "closed" and report["procs"] == 2
    # every request sent (warm-up included) was answered, and the server counted exactly those
    assert report["sent_total"] == report["answered_total"] == served(server, "digits-mlp") - before
    assert report["server_cpu_us_per_request"] > 0
    assert report["throughput_rps"] == pytest.approx(report["ok"] / 1.5, abs=0.01)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("protocol,load", [("grpc", "open"), ("stream", "closed"), ("stream", "open"),
                                           ("rest", "closed"), ("rest", "open")])
def test_each_protocol_closed_and_open_loop(server, protocol, load):
    before = served(server, "digits-mlp")
    args = ["--concurrency", "6"] if load == "closed" else ["--rate", "60"]
    report = run_json(server, "digits-mlp", *args, protocol=protocol)
    sane(report)
    assert report["sent_total"] == report["answered_total"] == served(server, "digits-mlp") - before
    if load == "open":
        # constant rate: exactly the scheduled requests of the window, all answered
        assert report["requests"] == pytest.approx(60 * 1.5, abs=1)
        assert report["throughput_rps"] == pytest.approx(60, rel=0.05)
        assert 0 < report["sender_lag_ms"]["p50"] <= report["sender_lag_ms"]["max"]


def test_poisson_rate_is_near_the_offered_one(server):
    report = run_json(server, "digits-mlp", "--rate", "80", "--poisson", "--procs", "2",
                      "--duration", "3")
    sane(report)
    # 240 expected arrivals: a Poisson count is within 4 standard deviations (4 * sqrt(240) ~ 62)
    assert abs(report["requests"] - 240) <= 4 * math.sqrt(240)


def npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("protocol,status", [("grpc", "NOT_FOUND"), ("rest", "HTTP 404"), ("stream", "STREAM: ")])
def test_unknown_model_is_counted_by_status(server, tmp_path, protocol, status):
    inputs = npz(tmp_path, "pixels.npz", pixels=np.zeros((4, 64), np.float32))
    report = run_json(server, "no-such-model", "--inputs", inputs, "--concurrency", "4", protocol=protocol)
    assert report["ok"] == 0 and report["requests"] > 0
    [(key, count)] = report["errors"].items()
    assert key.startswith(status) and count == report["requests"]
    assert report["latency_ms"]["p50"] is None


def test_npz_rows_are_what_is_sent(server, tmp_path):
    # flaky fails on rows whose x[0] is FLAG, and its fallback answers them: half the rows
    x = np.array([[FLAG, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    report = run_json(server, "flaky", "--inputs", npz(tmp_path, "x.npz", x=x), "--rate", "40")
    assert report["errors"] == {} and report["requests"] == pytest.approx(60, abs=1)
    assert report["fallback_share"] == pytest.approx(0.5, abs=0.05)
    # rows of the wrong width: the server refuses each, and the refusals are counted
    bad = npz(tmp_path, "bad.npz", pixels=np.zeros((3, 63), np.float32))
    report = run_json(server, "digits-mlp", "--inputs", bad, "--concurrency", "2")
    assert list(report["errors"]) == ["INVALID_ARGUMENT"] and report["ok"] == 0


def test_sweep_terminates_and_respects_the_target(server, tmp_path):
    plot = tmp_path / "sweep.png"
    r = bench(server, "digits-mlp", "--sweep", "--p99-target-ms", "500", "--sweep-start", "20",
              "--sweep-steps", "3", "--json", "--plot", str(plot), "--warmup", "0.2", "--duration", "1", "--quiet")
    out = json.loads(r.stdout)
    rates = [s["offered_rps"] for s in out["steps"]]
    assert rates == [20, 40, 80]  # a trivial load for this server: each step meets the target and doubles
    assert all(s["meets"] and s["latency_ms"]["p99"] <= 500 for s in out["steps"])
    assert out["best_rps"] == 80
    assert plot.stat().st_size > 0
    r = bench(server, "digits-mlp", "--sweep", "--p99-target-ms", "0.001", "--sweep-start", "40",
              "--sweep-steps", "3", "--warmup", "0.2", "--duration", "0.5")
    assert "no rate met the target" in r.stdout and r.stdout.count("\n") == 5  # header, 3 steps, verdict


def test_text_report_and_usage_errors(server):
    r = bench(server, "digits-mlp", "--concurrency", "2", *SHORT)
    assert "throughput" in r.stdout and "p99" in r.stdout and "errors       none" in r.stdout
    r = bench(server, "digits-mlp", "--sweep", check=False)
    assert r.returncode == 1 and "--p99-target-ms" in r.stderr
    r = bench(server, "no-such-model", "--quiet", check=False)
    assert r.returncode == 1 and "model metadata" in r.stderr and "Traceback" not in r.stderr
    r = bench(server, "digits-mlp", "--server-pid", str(2**22 + 12345), check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_help_lists_the_command():
    out = subprocess.run([sys.executable, "-m", "inferline", "--help"], capture_output=True, text=True).stdout
    assert "bench" in out
    assert os.path.exists(os.path.join(os.path.dirname(__file__), "test_bench.py"))


def test_readme_example_runs_as_written(server):
    import re

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md"), encoding="utf-8") as f:
        [block] = [b for b in re.findall(r"```sh\n(.*?)```", f.read(), flags=re.S) if "inferline bench" in b]
    # only the address changes (the server here takes free ports), and the pid is this server's
    command = block.strip().replace("inferline bench digits-mlp",
                                    f"{sys.executable} -m inferline bench digits-mlp --url 127.0.0.1:{server.grpc}")
    command = command.replace("$(pgrep -of 'inferline serve')", str(server.proc.pid))
    r = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "errors       none" in r.stdout and "server" in r.stdout
