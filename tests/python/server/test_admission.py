"""Admission control: the in-flight bound (static and adaptive), the deadline check before decoding,
refusals counted by reason; through the gRPC and REST frontends; and a bounded flood on loopback
during which health keeps answering and every refusal has a retryable code."""

import asyncio
import collections
import json
import os
import socket
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from inferline.errors import DeadlineExceeded
from inferline.server.admission import WINDOW_S, Admission, Overloaded


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_static_cap_refuses_beyond_it_and_counts_the_refusal():
    a = Admission(2)
    s1, s2 = a.admit(None), a.admit(None)
    with pytest.raises(Overloaded, match=r"2 requests in flight \(limit 2\)") as e:
        a.admit(None)
    assert e.value.grpc_code == "UNAVAILABLE" and e.value.retry_after_ms >= 1
    a.done(s1)
    a.admit(None)  # a slot freed
    a.done(s2)
    assert a.stats()["refused"] == {"overload": 1, "deadline": 0} and a.stats()["in_flight"] == 1


def test_a_deadline_shorter_than_the_current_latency_is_refused_before_any_work():
    clock = Clock()
    a = Admission(10, clock=clock)
    for _ in range(200):  # latency settles near 20 ms
        started = a.admit(None)
        clock.t += 0.020
        a.done(started)
    assert 0.015 < a.latency_s <= 0.020
    with pytest.raises(DeadlineExceeded, match="shorter than the predicted latency"):
        a.admit(0.005)
    a.done(a.admit(0.5))  # a deadline it can meet is admitted
    assert a.stats()["refused"]["deadline"] == 1


def test_a_latency_measured_under_a_burst_does_not_outlive_it():
    """Seconds of latency measured with 200 requests in flight; then the burst is over. A request
    with a 200 ms deadline and nothing ahead of it is admitted, not refused forever (an estimate
    only answers could move would never move again)."""
    clock = Clock()
    a = Admission(4096, clock=clock)
    for _ in range(20):
        held = [a.admit(None) for _ in range(200)]
        clock.t += 3.0
        for token in held:
            a.done(token)
    assert a.latency_s > 2.0 and a.predicted_latency_s() < 0.05
    token = a.admit(0.2)
    held = [a.admit(None) for _ in range(150)]
    with pytest.raises(DeadlineExceeded):  # with 150 ahead again, 200 ms is too short once more
        a.admit(0.2)
    for t in [token, *held]:
        a.done(t)


def test_the_adaptive_limit_falls_when_latency_exceeds_the_target_and_grows_when_it_is_met():
    clock = Clock()
    a = Admission(0, initial=100, target_ms=50, clock=clock)
    for _ in range(20):  # slow answers: 200 ms each, past the 50 ms target
        started = a.admit(None)
        clock.t += 0.2
        a.done(started)
    assert a.limit < 100
    low = a.limit
    a.latency_s = 0.0
    for _ in range(400):  # fast answers (0.5 ms apart) while the limit is reached: it grows again
        held = [a.admit(None) for _ in range(a.limit)]
        with pytest.raises(Overloaded):
            a.admit(None)
        for started in held:
            clock.t += 0.0005
            a.done(started)
    assert clock.t > 10 * WINDOW_S
    assert a.limit > low and a.limit <= a.max_limit


# ---- through the frontends --------------------------------------------------------------

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

from inferline.server.rest import start_rest  # noqa: E402
from inferline.server.settings import ServerSettings  # noqa: E402
from server_fixtures import ServerProcess, ServerThread, grpc_starter, make_repository, slow_model_package  # noqa: E402


@pytest.fixture
def capped(tmp_path, grpc_frontend):
    """A server whose worker admits one inference request at a time (per frontend: the native gRPC
    frontend admits on its own, the Python one shares the data plane's admission with REST), with a slow model."""
    repo = make_repository(tmp_path, extra=[slow_model_package(tmp_path, iterations=150_000, queue_capacity=8)])
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0, admission_limit=1,
                              admission_lobby=0)  # refused at once (the native lobby: test_grpc_lobby.cpp)
    with ServerThread(repo, frontends=[grpc_starter(grpc_frontend), start_rest], settings=settings) as srv:
        yield srv


def _slow_input(client_module):
    inp = client_module.InferInput("x", [1, 1], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1), np.float32))
    return inp


def _rest_slow(port: int) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/slow/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_over_the_limit_grpc_says_unavailable_with_a_retry_hint_and_rest_says_503(capped, grpc_frontend):
    import grpc

    grpc_port, http_port = capped.ports
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    first = []
    g.async_infer("slow", [_slow_input(grpcclient)], lambda result, error: first.append((result, error)))
    deadline = time.time() + 10
    while capped.grpc_admission()["in_flight"] == 0 and time.time() < deadline:
        time.sleep(0.001)
    raw = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    call = raw.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as e:
        call(b"\xff\xff not even a valid message", timeout=5)  # refused before decoding
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "limit 1" in e.value.details()
    assert dict(e.value.trailing_metadata())["retry-after-ms"].isdigit()
    h = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    rest_first = None
    if grpc_frontend == "native":  # REST admits on its own (the data plane's admission): fill it too
        rest_first = threading.Thread(target=_rest_slow, args=(http_port,))
        rest_first.start()
        while capped.dataplane.admission.in_flight == 0 and time.time() < deadline:
            time.sleep(0.001)
    with pytest.raises(Exception, match="overloaded"):
        h.infer("slow", [_slow_input(httpclient)])
    while not first and time.time() < deadline:
        time.sleep(0.01)
    assert first and first[0][1] is None  # the admitted request was answered
    if rest_first is not None:
        rest_first.join(30)
    grpc_stats, rest_stats = capped.grpc_admission(), capped.dataplane.admission.stats()
    assert grpc_stats["refused"]["overload"] >= 1 and rest_stats["refused"]["overload"] >= 1
    wait_until(lambda: capped.grpc_admission()["in_flight"] == capped.dataplane.admission.in_flight == 0)
    raw.close()


def test_a_flood_on_loopback_keeps_health_answering_and_refuses_with_retryable_codes(tmp_path, grpc_frontend):
    """Bounded (4 s): 600 outstanding single-row calls with a 200 ms deadline against one worker,
    while a prober asks ServerLive every 100 ms on its own connection."""
    import collections
    import threading

    import grpc

    from inferline.server.proto import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name="digits-mlp")
    req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(np.ones(64, np.float32).tobytes())
    payload = req.SerializeToString()
    codes, health, stop = collections.Counter(), [], threading.Event()

    async def flood(port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")

            async def caller():
                while not stop.is_set():
                    try:
                        await call(payload, timeout=0.2)
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1
            await asyncio.gather(*(caller() for _ in range(300)))

    def probe(port):
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        live = ch.unary_unary("/inference.GRPCInferenceService/ServerLive")
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                live(b"", timeout=2.0)
                health.append(time.perf_counter() - t0)
            except grpc.RpcError as e:
                health.append(e.code().name)
            time.sleep(0.1)
        ch.close()

    server = ServerProcess(make_repository(tmp_path), frontend=grpc_frontend)
    try:
        threads = [threading.Thread(target=lambda: asyncio.run(flood(server.grpc))) for _ in range(2)]
        threads.append(threading.Thread(target=probe, args=(server.grpc,)))
        for t in threads:
            t.start()
        time.sleep(4.0)
        stop.set()
        for t in threads:
            t.join(30)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        inp = grpcclient.InferInput("pixels", [1, 64], "FP32")
        inp.set_data_from_numpy(np.ones((1, 64), np.float32))
        assert client.infer("digits-mlp", [inp]).as_numpy("label").shape == (1, 1)  # still serving
    finally:
        assert server.stop() == 0
    assert codes["OK"] > 0, codes
    assert set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
    assert health and all(isinstance(h, float) for h in health), health  # every probe answered


def test_the_transport_cap_per_connection_follows_the_frontend():
    """--max-concurrent-streams 0 (the default): 1024 per connection on the native frontend, whose
    lobby serves the newest waiter first and should see the calls, 128 on the Python one, where more
    would only queue on the event loop; a value given is used as given by both."""
    from inferline.server import grpc_frontend
    from inferline.server.native import NATIVE_MAX_CONCURRENT_STREAMS, native_options
    from inferline.server.settings import SettingsError

    assert ServerSettings().max_concurrent_streams == 0
    assert native_options(ServerSettings())["max_concurrent_streams"] == NATIVE_MAX_CONCURRENT_STREAMS == 1024
    assert native_options(ServerSettings(max_concurrent_streams=64))["max_concurrent_streams"] == 64
    assert grpc_frontend.PYTHON_MAX_CONCURRENT_STREAMS == 128
    with pytest.raises(SettingsError, match="--max-concurrent-streams -1"):
        ServerSettings(max_concurrent_streams=-1).check()


def _frontend_thread_policies() -> dict:
    """{thread kind: set of scheduling policies} for the native frontend's threads: its lanes
    ("il-grpc-N", polling gRPC's completion queues) and its lobby's sweeper."""
    policies = collections.defaultdict(set)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            if name.startswith(("il-grpc", "il-lobby")):
                policies[name.rstrip("-0123456789")].add(os.sched_getscheduler(int(tid)))
        except OSError:  # the thread ended
            pass
    return dict(policies)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
@pytest.mark.parametrize("overload_sched", ["batch", "normal"])
def test_while_it_refuses_the_native_frontends_threads_give_way_to_the_model(tmp_path, overload_sched):
    """--overload-sched batch (the default): while the native frontend refuses requests, gRPC's
    threads and the lobby's run SCHED_BATCH, and SCHED_OTHER again a second after the last refusal.
    Requests that wait and are all admitted (busy, keeping up) change nothing; nor does 'normal'."""
    from server_fixtures import require_native_frontend

    require_native_frontend()
    repo = make_repository(tmp_path, extra=[slow_model_package(tmp_path, iterations=300_000, queue_capacity=8)])
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0, admission_limit=1,
                              overload_sched=overload_sched)
    normal = lambda: all(p == {os.SCHED_OTHER} for p in _frontend_thread_policies().values())  # noqa: E731
    with ServerThread(repo, frontends=[grpc_starter("native")], settings=settings) as srv:
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.ports[0]}")
        assert _frontend_thread_policies().get("il-grpc") == {os.SCHED_OTHER}
        answers = []
        for _ in range(3):  # one admitted, two wait for a slot (with a deadline) and get it
            g.async_infer("slow", [_slow_input(grpcclient)], lambda result, error: answers.append(error),
                          client_timeout=60)
        wait_until(lambda: srv.grpc_admission()["lobby"]["parked"] >= 1)
        time.sleep(0.05)
        assert normal()
        wait_until(lambda: len(answers) == 3, timeout=60)
        assert answers == [None] * 3, [str(a) for a in answers]
        assert normal()

        answers.clear()
        for _ in range(4):  # one admitted; three wait without a deadline and are refused after 200 ms
            g.async_infer("slow", [_slow_input(grpcclient)], lambda result, error: answers.append(error))
        wait_until(lambda: sum(a is not None for a in answers) >= 1, timeout=30)
        if overload_sched == "batch":  # within the second that follows a refusal
            wait_until(lambda: _frontend_thread_policies() == {"il-grpc": {os.SCHED_BATCH},
                                                               "il-lobby": {os.SCHED_BATCH}}, timeout=0.8)
        wait_until(lambda: len(answers) == 4, timeout=60)
        refused = [str(a) for a in answers if a is not None]
        assert len(refused) == 3 and all("UNAVAILABLE] server overloaded: waited" in r for r in refused), refused
        wait_until(normal, timeout=5)  # a second after the last refusal


def _served_nodelay(port: int) -> set:
    """TCP_NODELAY of this process's connections accepted on `port` (bound to it, with a peer)."""
    values = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:  # closed meanwhile
            continue
        with s:
            try:
                if (s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
                        and s.getsockname()[1] == port):
                    s.getpeername()  # the listener has none
                    values.add(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)
            except OSError:
                pass
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("overload_coalesce", ["on", "off"])
def test_while_it_refuses_the_native_frontends_connections_coalesce_small_answers(tmp_path, overload_coalesce):
    """--overload-coalesce on (the default): while the native frontend refuses requests, its
    connections run Nagle's algorithm (TCP_NODELAY off), and TCP_NODELAY again a second after the
    last refusal; a busy server that admits every waiter keeps TCP_NODELAY, and so does 'off'."""
    from server_fixtures import require_native_frontend

    require_native_frontend()
    repo = make_repository(tmp_path, extra=[slow_model_package(tmp_path, iterations=300_000, queue_capacity=8)])
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0, admission_limit=1,
                              overload_coalesce=overload_coalesce)
    with ServerThread(repo, frontends=[grpc_starter("native")], settings=settings) as srv:
        port = srv.ports[0]
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert g.is_server_live()
        assert _served_nodelay(port) == {True}, "gRPC's connections start with TCP_NODELAY"
        answers = []
        for _ in range(3):  # one admitted, two wait for a slot (with a deadline) and get it
            g.async_infer("slow", [_slow_input(grpcclient)], lambda result, error: answers.append(error),
                          client_timeout=60)
        wait_until(lambda: len(answers) == 3, timeout=60)
        assert answers == [None] * 3, [str(a) for a in answers]
        assert _served_nodelay(port) == {True}

        answers.clear()
        for _ in range(4):  # one admitted; three wait without a deadline and are refused after 200 ms
            g.async_infer("slow", [_slow_input(grpcclient)], lambda result, error: answers.append(error))
        wait_until(lambda: sum(a is not None for a in answers) >= 1, timeout=30)
        if overload_coalesce == "on":  # within the second that follows a refusal
            wait_until(lambda: _served_nodelay(port) == {False}, timeout=0.8)
        else:
            assert _served_nodelay(port) == {True}
        wait_until(lambda: len(answers) == 4, timeout=60)
        refused = [str(a) for a in answers if a is not None]
        assert len(refused) == 3 and all("UNAVAILABLE] server overloaded: waited" in r for r in refused), refused
        wait_until(lambda: _served_nodelay(port) == {True}, timeout=5)  # a second after the last refusal
        assert g.is_server_live()


@pytest.mark.parametrize("setting, option, on, off, bad, message", [
    ("overload_sched", "overload_batch_sched", "batch", "normal", "idle",
     "--overload-sched 'idle': 'batch' or 'normal'"),
    ("overload_coalesce", "overload_coalesce", "on", "off", "yes", "--overload-coalesce 'yes': 'on' or 'off'"),
])
def test_an_overload_mode_setting_takes_its_two_values_and_says_so_otherwise(setting, option, on, off, bad, message):
    """--overload-sched batch|normal and --overload-coalesce on|off: on by default, passed to the
    native frontend as a bool, anything else a clear error."""
    from inferline.server.native import native_options
    from inferline.server.settings import SettingsError

    assert getattr(ServerSettings(), setting) == on
    assert native_options(ServerSettings())[option] is True
    assert native_options(ServerSettings(**{setting: off}))[option] is False
    with pytest.raises(SettingsError, match=message):
        ServerSettings(**{setting: bad}).check()
