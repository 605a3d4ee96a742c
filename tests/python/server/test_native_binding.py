"""_core.NativeFrontend, the binding of the native gRPC frontend, against the real tritonclient.

Each test starts a frontend over a real _core.Engine and _core.Router (model "a": y = 2x, a
Python backend, routed by a single-version policy) on a free port: inference answered in C++,
control calls handed to a Python callable, stats, and shutdown (the request tap: test_native_tap.py). Skipped where this
build has no native frontend (_core.NATIVE_FRONTEND says why).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

import grpc
import numpy as np
import pytest

from inferline import _core

if _core.NATIVE_FRONTEND:
    pytest.skip(_core.NATIVE_FRONTEND, allow_module_level=True)

import tritonclient.grpc as tc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from inferline.server.proto import inference_pb2 as pb  # noqa: E402

from native_helpers import infer, rows  # noqa: E402

SERVICE = "/inference.GRPCInferenceService/"
C = grpc.StatusCode


def status_of(excinfo) -> str:
    return excinfo.value.status().removeprefix("StatusCode.")


# ---- inference ----------------------------------------------------------------------

def test_infer_is_answered_through_the_router(start):
    fe, client = start()
    assert fe.port > 0
    x = rows(3)
    result = infer(client, x, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("a", "1", "req-7")
    assert response.parameters["routed_to"].string_param == "a:1"
    assert "fallback_reason" not in response.parameters


def test_set_serving_drives_server_ready(start):
    fe, client = start()
    assert client.is_server_live() and client.is_server_ready()
    fe.set_serving(False)
    assert client.is_server_live() and not client.is_server_ready()
    fe.set_serving(True)
    assert client.is_server_ready()


# ---- control calls --------------------------------------------------------------------

class Recorder:
    """A control callable that records each call and answers ServerMetadata from another thread."""

    def __init__(self):
        self.calls = []
        self.replied_twice = threading.Event()

    def __call__(self, method, request, metadata, deadline_left_s, reply):
        self.calls.append((method, request, metadata, deadline_left_s))
        response = pb.ServerMetadataResponse(name="native-test", version="9.9", extensions=["x"])
        threading.Thread(target=self._answer, args=(reply, response.SerializeToString())).start()

    def _answer(self, reply, response):
        reply(0, "", response)
        reply(13, "a second reply is ignored")
        self.replied_twice.set()


def test_control_gets_the_call_and_its_reply_reaches_the_client(start):
    control = Recorder()
    fe, client = start(control)
    meta = client.get_server_metadata(headers={"authorization": "Bearer t0ken"}, client_timeout=5)
    assert (meta.name, meta.version, list(meta.extensions)) == ("native-test", "9.9", ["x"])
    assert control.replied_twice.wait(5)
    [(method, request, metadata, deadline)] = control.calls
    assert method == SERVICE + "ServerMetadata"
    assert isinstance(request, bytes) and pb.ServerMetadataRequest.FromString(request) == pb.ServerMetadataRequest()
    assert ("authorization", "Bearer t0ken") in metadata
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata)
    assert 0 < deadline <= 5.1  # grpc-timeout is rounded up on the wire

    client.get_server_metadata()
    assert control.calls[1][3] is None  # no deadline sent


def test_control_answers_an_error_with_trailers(start):
    def control(method, request, metadata, deadline_left_s, reply):
        reply(14, "busy, come back", trailers=[("retry-after-ms", "250"), ("x-trace-bin", b"\x00\x01")])

    fe, _ = start(control)
    with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as channel:
        call = channel.unary_unary(SERVICE + "ModelMetadata")
        with pytest.raises(grpc.RpcError) as e:
            call(pb.ModelMetadataRequest(name="a").SerializeToString(), timeout=5)
    assert (e.value.code(), e.value.details()) == (C.UNAVAILABLE, "busy, come back")
    trailers = dict(e.value.trailing_metadata())
    assert trailers["retry-after-ms"] == "250" and trailers["x-trace-bin"] == b"\x00\x01"


def test_an_exception_in_control_answers_internal_and_is_logged(start, caplog):
    def control(method, request, metadata, deadline_left_s, reply):
        raise KeyError("no such thing")

    fe, client = start(control)
    with caplog.at_level(logging.ERROR, logger="inferline.server.native"):
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("a")
        assert status_of(e) == "INTERNAL" and "KeyError" in e.value.message()
        np.testing.assert_array_equal(infer(client, rows(1)).as_numpy("y"), rows(1) * 2)
    [record] = [r for r in caplog.records if r.name == "inferline.server.native"]
    assert SERVICE + "ModelMetadata" in record.getMessage() and record.exc_info[0] is KeyError


def test_a_reply_dropped_unanswered_answers_internal(start):
    fe, client = start(lambda method, request, metadata, deadline_left_s, reply: None)
    with pytest.raises(InferenceServerException) as e:
        client.get_server_metadata(client_timeout=5)
    assert status_of(e) == "INTERNAL" and "without answering" in e.value.message()


def test_without_control_other_rpcs_are_unimplemented(start):
    fe, client = start()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("a")
    assert status_of(e) == "UNIMPLEMENTED"


def test_reply_checks_its_arguments(start):
    got, outcome = [], []
    fe, client = start(lambda method, request, metadata, deadline_left_s, reply: got.append(reply))

    def call():
        try:
            client.get_server_metadata(client_timeout=10)
        except InferenceServerException as e:
            outcome.append((e.status(), e.message()))

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    [reply] = got
    with pytest.raises(ValueError, match="17"):
        reply(17)
    with pytest.raises(ValueError, match="pair"):
        reply(5, "x", b"", [("only-a-key",)])
    reply(5, "not here")  # still unanswered after the refused calls: this one counts
    t.join(5)
    assert outcome == [("StatusCode.NOT_FOUND", "not here")]


# ---- stats ------------------------------------------------------------------------------

def test_stats_count_errors_and_time_the_stages(start):
    fe, client = start()
    infer(client, rows(2))
    with pytest.raises(InferenceServerException) as e:
        infer(client, rows(1), model="nope")
    assert status_of(e) == "NOT_FOUND"
    s = fe.stats()
    assert set(s) == {"admission", "errors", "stages", "open_streams"}
    assert set(s["admission"]) == {"limit", "adaptive", "in_flight", "latency_ms", "admitted", "refused", "lobby"}
    assert s["admission"]["adaptive"] is True and s["admission"]["admitted"] >= 2
    assert s["admission"]["refused"] == {"overload": 0, "deadline": 0, "lobby_expired": 0, "lobby_shed": 0,
                                         "lobby_timed_out": 0}
    assert s["admission"]["lobby"] == {"size": 8 * 4096, "parked": 0, "held": 0, "admitted": 0,
                                         "cancelled": 0}
    assert s["errors"] == {("grpc", "NOT_FOUND", "_unknown"): 1}
    decode, encode = s["stages"][("a", "1")]
    assert set(decode) == set(encode) == set(_core.StageHistogram().snapshot())
    assert decode["count"] == encode["count"] == 1
    assert s["open_streams"] == 0


def test_static_admission_limit_from_options(start):
    fe, _ = start(admission_limit=7, admission_lobby=3)
    a = fe.stats()["admission"]
    assert (a["limit"], a["adaptive"], a["lobby"]["size"]) == (7, False, 3)


# ---- options and start ------------------------------------------------------------------

def test_an_unknown_option_is_named(router):
    with pytest.raises(ValueError, match="'adress'"):
        _core.NativeFrontend(router, {"adress": "127.0.0.1:0"})
    with pytest.raises(ValueError, match="'threads'"):
        _core.NativeFrontend(router, {"threads": "two"})


def test_a_port_in_use_raises_core_error(start, router):
    fe, _ = start()
    with pytest.raises(_core.CoreError) as e:
        _core.NativeFrontend(router, {"address": f"127.0.0.1:{fe.port}"})
    assert _core.STATUS_NAMES[e.value.code] == "UNAVAILABLE" and str(fe.port) in e.value.message


# ---- shutdown -----------------------------------------------------------------------------

def test_shutdown_ends_an_unanswered_control_call(router):
    held, called = [], threading.Event()

    def control(method, request, metadata, deadline_left_s, reply):
        held.append(reply)  # never answered
        called.set()

    fe = _core.NativeFrontend(router, {"address": "127.0.0.1:0"}, control)
    outcome = []

    def client_call():
        with grpc.insecure_channel(f"127.0.0.1:{fe.port}") as channel:
            try:
                channel.unary_unary(SERVICE + "ServerMetadata")(b"", timeout=30)
            except grpc.RpcError as e:
                outcome.append(e.code())

    t = threading.Thread(target=client_call)
    t.start()
    assert called.wait(5)
    t0 = time.monotonic()
    fe.shutdown(0.5)
    assert time.monotonic() - t0 < 5
    t.join(10)
    assert outcome and outcome[0] != C.OK
    fe.shutdown(0.5)  # idempotent
    del fe
    gc.collect()
    held[0](0, "", b"")  # after the frontend is gone: ignored, no crash


def test_concurrent_control_calls_and_inference(start):
    """Control calls answered from a worker thread while inference runs: every answer reaches its caller."""
    pending = []
    cv = threading.Condition()

    def control(method, request, metadata, deadline_left_s, reply):
        with cv:
            pending.append((dict(metadata)["x-caller"], reply))
            cv.notify()

    stop = False

    def answerer():
        while True:
            with cv:
                cv.wait_for(lambda: pending or stop, timeout=1)
                if stop and not pending:
                    return
                batch, pending[:] = list(pending), []
            for caller, reply in batch:
                reply(0, "", pb.ServerMetadataResponse(name=caller).SerializeToString())

    fe, _ = start(control)
    worker = threading.Thread(target=answerer)
    worker.start()
    errors = []

    def caller(k):
        with tc.InferenceServerClient(f"127.0.0.1:{fe.port}") as client:
            for i in range(20):
                try:
                    if i % 2:
                        x = rows(1, seed=k * 100 + i)
                        np.testing.assert_array_equal(infer(client, x).as_numpy("y"), x * 2)
                    else:
                        name = client.get_server_metadata(headers={"x-caller": f"c{k}-{i}"}).name
                        assert name == f"c{k}-{i}", name
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    errors.append(repr(e))

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with cv:
        stop = True
        cv.notify()
    worker.join(5)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_dropping_the_frontend_shuts_it_down(router):
    held, called = [], threading.Event()

    def control(method, request, metadata, deadline_left_s, reply):
        held.append(reply)
        called.set()

    fe = _core.NativeFrontend(router, {"address": "127.0.0.1:0"}, control)
    port, outcome = fe.port, []

    def client_call():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                channel.unary_unary(SERVICE + "ServerMetadata")(b"", timeout=30)
            except grpc.RpcError as e:
                outcome.append(e.code())

    t = threading.Thread(target=client_call)
    t.start()
    assert called.wait(5)
    t0 = time.monotonic()
    del fe  # shutdown with grace 0, GIL released
    gc.collect()
    assert time.monotonic() - t0 < 5
    t.join(10)
    assert outcome and outcome[0] != C.OK
    held[0](0, "", b"")  # ignored
