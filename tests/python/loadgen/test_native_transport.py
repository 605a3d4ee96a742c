"""The native transport of `inferline bench` (_core.GrpcLoad, csrc/loadgen/) against a real
`inferline serve` on the native gRPC frontend: closed and open loop counts checked against the
server's own statistics, errors by status (an unknown model: NOT_FOUND, in streams an error
answer), stream mode, fallback detection, the open loop's rate, and the same report keys as the
Python transport. Skipped where the native load generator is not built; under CI it must be."""

import json
import math
import os
import urllib.request

import numpy as np
import pytest

from inferline import _core
from inferline.errors import InferlineError
from inferline.loadgen import BenchConfig, Target, run_bench
from inferline.loadgen.histogram import Histogram
from server_fixtures import FLAG, ServerProcess, flaky_package, make_repository, steady_package

SHORT = dict(warmup_s=0.3, duration_s=1.5, progress=False)


def require_native_loadgen() -> None:
    reason = getattr(_core, "NATIVE_LOADGEN", "no _core.NATIVE_LOADGEN in this build")
    if reason:
        message = f"the native gRPC load generator is not built ({reason})"
        if os.environ.get("CI"):
            pytest.fail(message + " -- required in CI")
        pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_native_loadgen()
    root = tmp_path_factory.mktemp("native-bench")
    repo = make_repository(root, extra=[steady_package(root),
                                        flaky_package(root, fallback="steady",
                                                      breaker={"consecutive_failures": 0, "error_rate": 0})])
    srv = ServerProcess(repo, frontend="native")
    yield srv
    srv.stop()


def served(server, model):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/models/{model}/stats") as r:
        return sum(s["inference_count"] for s in json.loads(r.read())["model_stats"])


def bench(server, model, protocol="grpc", **kw):
    config = BenchConfig(Target(f"127.0.0.1:{server.grpc}", protocol, model), transport="native", **{**SHORT, **kw})
    return run_bench(config)


def sane(report, duration_s=1.5):
    lat = report["latency_ms"]
    assert report["transport"] == "native"
    assert report["errors"] == {} and report["ok"] == report["requests"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert report["histogram"]["count"] == report["ok"]
    assert report["client_cpu_us_per_request"] > 0
    assert sum(s["count"] for s in report["latency_over_time"]) == report["ok"]
    assert report["throughput_rps"] == pytest.approx(report["ok"] / duration_s, abs=0.01)
    # the histogram is the Python one's scheme: its quantiles read back within the bucket precision
    h = Histogram.from_dict(report["histogram"])
    assert h.min <= h.quantile(0.5) <= h.max


@pytest.mark.parametrize("protocol", ["grpc", "stream"])
def test_closed_loop_counts_what_the_server_served(server, protocol):
    before = served(server, "digits-mlp")
    report = bench(server, "digits-mlp", protocol, concurrency=8, procs=2, server_pid=server.proc.pid)
    sane(report)
    assert report["mode"] == "closed" and report["procs"] == 2
    assert report["sent_total"] == report["answered_total"] == served(server, "digits-mlp") - before
    assert report["server_cpu_us_per_request"] > 0


@pytest.mark.parametrize("protocol", ["grpc", "stream"])
def test_open_loop_sends_exactly_the_schedule(server, protocol):
    before = served(server, "digits-mlp")
    report = bench(server, "digits-mlp", protocol, rate=200, procs=2)
    sane(report)
    assert report["sent_total"] == report["answered_total"] == served(server, "digits-mlp") - before
    # constant rate: exactly the scheduled requests of the window, all answered
    assert report["requests"] == pytest.approx(200 * 1.5, abs=1)
    assert report["throughput_rps"] == pytest.approx(200, rel=0.02)
    assert 0 < report["sender_lag_ms"]["p50"] <= report["sender_lag_ms"]["max"]


def test_open_loop_rate_is_accurate_at_a_high_rate(server):
    # 3000 req/s from one process: the C++ scheduler keeps the schedule (what was sent in the
    # window is the schedule's count), and the lag it reports stays small
    report = bench(server, "digits-mlp", rate=3000, procs=1)
    assert report["errors"] == {}
    assert report["requests"] == pytest.approx(3000 * 1.5, abs=2)
    assert report["sender_lag_ms"]["p50"] < 1.0


def test_poisson_rate_is_near_the_offered_one(server):
    report = bench(server, "digits-mlp", rate=400, poisson=True, procs=2, duration_s=2.0)
    sane(report, duration_s=2.0)
    # 800 expected arrivals: a Poisson count within 4 standard deviations
    assert abs(report["requests"] - 800) <= 4 * math.sqrt(800)


@pytest.mark.parametrize("protocol,status", [("grpc", "NOT_FOUND"), ("stream", "STREAM: ")])
def test_unknown_model_is_counted_by_status(server, tmp_path, protocol, status):
    inputs = tmp_path / "pixels.npz"
    np.savez(inputs, pixels=np.zeros((4, 64), np.float32))
    report = bench(server, "no-such-model", protocol, inputs=str(inputs), concurrency=4)
    assert report["ok"] == 0 and report["requests"] > 0
    [(key, count)] = report["errors"].items()
    assert key.startswith(status) and count == report["requests"]
    assert report["latency_ms"]["p50"] is None
    assert report["sent_total"] == report["answered_total"]


@pytest.mark.parametrize("protocol", ["grpc", "stream"])
def test_fallback_answers_are_detected(server, tmp_path, protocol):
    # flaky fails on rows whose x[0] is FLAG, and its fallback answers them: half the rows
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.array([[FLAG, 0, 0, 0], [1, 0, 0, 0]], np.float32))
    report = bench(server, "flaky", protocol, inputs=str(inputs), rate=40)
    assert report["errors"] == {} and report["requests"] == pytest.approx(60, abs=1)
    assert report["fallback_share"] == pytest.approx(0.5, abs=0.05)


def test_invalid_requests_are_counted_and_channels_are_separate(server, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((3, 63), np.float32))
    report = bench(server, "digits-mlp", inputs=str(bad), concurrency=4, channels=3)
    assert list(report["errors"]) == ["INVALID_ARGUMENT"] and report["ok"] == 0


def test_transport_choice():
    from inferline.loadgen.runner import resolve_transport

    require_native_loadgen()
    grpc = BenchConfig(Target("h:1", "grpc", "m"))
    assert resolve_transport(grpc) == "native"
    assert resolve_transport(BenchConfig(Target("h:1", "stream", "m"))) == "native"
    assert resolve_transport(BenchConfig(Target("http://h:1", "rest", "m"))) == "python"
    assert resolve_transport(BenchConfig(Target("h:1", "grpc", "m"), transport="python")) == "python"
    with pytest.raises(InferlineError, match="gRPC only"):
        resolve_transport(BenchConfig(Target("http://h:1", "rest", "m"), transport="native"))


def test_unreachable_server_fails_cleanly():
    from inferline.loadgen.native import connect_native
    from inferline.loadgen.worker import Plan

    require_native_loadgen()
    plan = Plan(Target("127.0.0.1:1", "grpc", "m"), [b"x"], timeout_s=0.3, transport="native")
    with pytest.raises(InferlineError, match="not connected"):
        connect_native(plan)


def test_calls_a_server_never_answers_end_at_their_deadline():
    """The client enforces each call's deadline itself: against a peer that speaks HTTP/2 (its
    SETTINGS, so the channel is ready) and then never answers nor cancels anything, every call
    ends DEADLINE_EXCEEDED at timeout_s and the run returns."""
    import socket
    import threading
    import time

    from inferline.loadgen.native import connect_native, run_native
    from inferline.loadgen.worker import Plan

    require_native_loadgen()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held, stop = [], threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # an empty SETTINGS frame
            held.append(conn)
            threading.Thread(target=drain, args=(conn,), daemon=True).start()

    def drain(conn):
        acked = False
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not acked:  # ACK the client's SETTINGS once it has sent its preface
                conn.sendall(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))
                acked = True

    threading.Thread(target=serve, daemon=True).start()
    try:
        plan = Plan(Target(f"127.0.0.1:{port}", "grpc", "m"), [b""], concurrency=4, warmup_s=0.0, duration_s=0.5,
                    timeout_s=1.0, transport="native")
        load = connect_native(plan)
        t0 = time.monotonic()
        result = run_native(plan, load, time.monotonic() + 0.1)
        took = time.monotonic() - t0
    finally:
        stop.set()
        for conn in held:
            conn.close()
        listener.close()
    assert result["errors"] == {"DEADLINE_EXCEEDED": 4}
    assert took < 10
