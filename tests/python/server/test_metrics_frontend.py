"""What the frontends count and the core's queue rows, through /metrics: decode and encode
histograms per version, request errors by protocol, code and model (unknown names under one
label), and rows queued while a backend is held."""

import json
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

import inferline as il
from inferline import _core, errors
from inferline.server.control import start_control
from inferline.server.frontend_stats import UNKNOWN_MODEL, FrontendStats, error_code
from inferline.server.grpc_frontend import SERVICE
from inferline.server.proto import inference_pb2 as pb
from inferline.server.rest import start_rest
from inferline.server.settings import ServerSettings
from helpers import make_config
from server.test_metrics import scrape
from server_fixtures import ServerThread, grpc_starter, make_repository, slow_model_package

tc = pytest.importorskip("tritonclient.grpc")
MV = frozenset({("model", "digits-mlp"), ("version", "1")})


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_frontend):
    root = tmp_path_factory.mktemp(f"frontend-metrics-{grpc_frontend}")
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0)
    with ServerThread(make_repository(root), [grpc_starter(grpc_frontend), start_rest, start_control], settings) as srv:
        yield srv


def grpc_infer(port: int, x: np.ndarray, model: str = "digits-mlp"):
    c = tc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        inp = tc.InferInput("pixels", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return c.infer(model, [inp])
    finally:
        c.close()


def rest_post(port: int, path: str, body: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def rest_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()


def errors_by_key(m: dict) -> dict:
    return {tuple(sorted(k)): v for k, v in m.get("inferline_request_errors_total", {}).items()}


def err(protocol: str, code: str, model: str) -> tuple:
    return tuple(sorted({("protocol", protocol), ("code", code), ("model", model)}))


def test_decode_and_encode_are_timed_per_version_over_grpc_and_rest(server):
    grpc_port, http_port, metrics_port = server.ports
    rng = np.random.default_rng(1)
    before = scrape(metrics_port)
    n0 = before.get("inferline_decode_duration_seconds_count", {}).get(MV, 0)
    for _ in range(5):
        grpc_infer(grpc_port, rng.random((2, 64), dtype=np.float32))
    for _ in range(7):
        assert rest_post(http_port, "/v2/models/digits-mlp/infer", rest_body(rng.random((1, 64), np.float32))) == 200
    m = scrape(metrics_port)
    for stage in ("decode", "encode"):
        assert m[f"inferline_{stage}_duration_seconds_count"][MV] == n0 + 12, stage
        assert 0 < m[f"inferline_{stage}_duration_seconds_sum"][MV] < 12, stage  # seconds, not µs or ns
        buckets = sorted((float(dict(k)["le"]), v) for k, v in m[f"inferline_{stage}_duration_seconds_bucket"].items()
                         if k >= MV)
        assert buckets[-1] == (float("inf"), n0 + 12) and [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert m["inferline_queue_rows"][MV] == 0  # every request answered
    assert m["inferline_inferences_total"][MV] >= 17


def test_errors_are_counted_by_protocol_code_and_bounded_model(server):
    grpc_port, http_port, metrics_port = server.ports
    before = errors_by_key(scrape(metrics_port))
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    raw = channel.unary_unary(f"/{SERVICE}/ModelInfer")
    codes = []
    for body in (b"\xff\xff not a message",
                 pb.ModelInferRequest(model_name="nope-1").SerializeToString(),
                 pb.ModelInferRequest(model_name="nope-2").SerializeToString(),
                 pb.ModelInferRequest(model_name="digits-mlp", inputs=[pb.ModelInferRequest.InferInputTensor(
                     name="pixels", datatype="FP32", shape=[1, 3])], raw_input_contents=[b"\0" * 12])
                 .SerializeToString()):
        with pytest.raises(grpc.RpcError) as e:
            raw(body, timeout=10)
        codes.append(e.value.code())
    stream = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")
    answers = list(stream(iter([pb.ModelInferRequest(model_name="nope-3").SerializeToString()]), timeout=10))
    channel.close()
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.INVALID_ARGUMENT]
    assert b"nope-3" in answers[0]  # the stream's error message names the model
    assert rest_post(http_port, "/v2/models/nope-4/infer", rest_body(np.zeros((1, 64), np.float32))) == 404
    assert rest_post(http_port, "/v2/models/digits-mlp/infer", b"{not json") == 400
    grpc_infer(grpc_port, np.zeros((1, 64), np.float32))  # an answered request counts nothing
    after = errors_by_key(scrape(metrics_port))
    added = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert added == {err("grpc", "INVALID_ARGUMENT", ""): 1, err("grpc", "NOT_FOUND", UNKNOWN_MODEL): 2,
                     err("grpc", "INVALID_ARGUMENT", "digits-mlp"): 1,
                     err("grpc_stream", "NOT_FOUND", UNKNOWN_MODEL): 1,
                     err("rest", "NOT_FOUND", UNKNOWN_MODEL): 1, err("rest", "INVALID_ARGUMENT", "digits-mlp"): 1}
    assert not any(dict(k)["model"].startswith("nope") for k in after)


def test_overload_refusals_count_as_unavailable_and_running_rows_are_queued(tmp_path, grpc_frontend):
    repo = make_repository(tmp_path, extra=[slow_model_package(tmp_path, iterations=150_000, queue_capacity=8)])
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0, admission_limit=1,
                              admission_lobby=0)  # refused at once (native: no lobby)
    with ServerThread(repo, [grpc_starter(grpc_frontend), start_rest, start_control], settings) as srv:
        grpc_port, http_port, metrics_port = srv.ports
        c = tc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        inp = tc.InferInput("x", [1, 1], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1), np.float32))
        first = []
        c.async_infer("slow", [inp], lambda result, error: first.append(error))
        deadline = time.time() + 10
        while srv.grpc_admission()["in_flight"] == 0 and time.time() < deadline:
            time.sleep(0.001)
        raw = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        with pytest.raises(grpc.RpcError) as e:
            raw.unary_unary(f"/{SERVICE}/ModelInfer")(b"\xff", timeout=5)  # refused before decoding
        raw.close()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}).encode()
        rest_first = []
        if grpc_frontend == "native":  # REST admits on its own (the data plane's admission): fill it too
            threading.Thread(target=lambda: rest_first.append(rest_post(http_port, "/v2/models/slow/infer", body)),
                             daemon=True).start()
            while srv.dataplane.admission.in_flight == 0 and time.time() < deadline:
                time.sleep(0.001)
        assert rest_post(http_port, "/v2/models/slow/infer", body) == 503
        while (not first or (grpc_frontend == "native" and not rest_first)) and time.time() < deadline:
            time.sleep(0.01)
        c.close()
        assert first == [None] and rest_first in ([], [200])
        m = scrape(metrics_port)
        got = errors_by_key(m)
        assert got[err("grpc", "UNAVAILABLE", "")] == 1 and got[err("rest", "UNAVAILABLE", "slow")] == 1
        refused = {tuple(sorted(k)): v for k, v in m["inferline_admission_refused_total"].items()}
        assert refused[(("code", "UNAVAILABLE"), ("reason", "overload"))] == 2  # gRPC's and REST's, whichever counted


def test_the_native_lobby_is_seen_waiting_and_admitting(tmp_path):
    from server_fixtures import require_native_frontend

    require_native_frontend()
    repo = make_repository(tmp_path, extra=[slow_model_package(tmp_path, iterations=300_000, queue_capacity=8)])
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0, admission_limit=1)
    with ServerThread(repo, [grpc_starter("native"), start_rest, start_control], settings) as srv:
        grpc_port, _, metrics_port = srv.ports
        c = tc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        inp = tc.InferInput("x", [1, 1], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1), np.float32))
        answers = []
        for _ in range(3):  # one admitted, two wait (with a deadline: until a slot frees)
            c.async_infer("slow", [inp], lambda result, error: answers.append(error), client_timeout=60)
        deadline = time.time() + 30
        while srv.grpc_admission()["lobby"]["parked"] < 2 and time.time() < deadline:
            time.sleep(0.001)
        waiting = {dict(k)["state"]: v for k, v in scrape(metrics_port)["inferline_admission_lobby_requests"].items()}
        assert waiting == {"waiting": 2, "held": 0}
        while len(answers) < 3 and time.time() < deadline:
            time.sleep(0.01)
        c.close()
        assert answers == [None] * 3
        m = scrape(metrics_port)
        assert {dict(k)["state"]: v for k, v in m["inferline_admission_lobby_requests"].items()} == \
            {"waiting": 0, "held": 0}
        assert sum(m["inferline_admission_lobby_admitted_total"].values()) == 2


def test_the_core_counts_rows_queued_or_running_until_answered():
    gate, entered = threading.Event(), threading.Event()

    def held(inputs):
        entered.set()
        assert gate.wait(30)
        return {"y": inputs["x"]}

    with il.Engine() as engine:
        engine.load(make_config(max_batch=8, delay_us=0), held)
        futures = [engine.submit("m", {"x": np.ones((1, 4), np.float32)})]
        assert entered.wait(30)
        futures += [engine.submit("m", {"x": np.ones((r, 4), np.float32)}) for r in (2, 3)]
        assert engine.stats("m")["queued_rows"] == 6
        gate.set()
        for f in futures:
            f.result(timeout=30)
        assert engine.stats("m")["queued_rows"] == 0


def test_stage_histogram_counts_on_the_core_bounds_from_many_threads():
    h = _core.StageHistogram()
    h.observe_ns(1_500_000)  # 1500 µs
    h.observe_ns(999)  # under a microsecond: 0
    s = h.snapshot()
    assert (s["count"], s["sum"], s["max"]) == (2, 1500, 1500)
    assert s["buckets"][0] == (0, 1) and s["buckets"][1][0] >= 1500 > s["buckets"][1][0] * 15 // 16
    threads = [threading.Thread(target=lambda: [h.observe_ns(2_000) for _ in range(20_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = h.snapshot()
    assert s["count"] == 80_002 and sum(n for _, n in s["buckets"]) == 80_002 and s["sum"] == 1500 + 160_000


def test_unknown_names_share_one_label_and_refusals_map_to_unavailable():
    fs = FrontendStats(lambda: ["a"])
    for name in ["a", "b", "c", "", None]:
        fs.error("rest", "NOT_FOUND", name)
    assert fs.errors() == {("rest", "NOT_FOUND", "a"): 1, ("rest", "NOT_FOUND", UNKNOWN_MODEL): 2,
                           ("rest", "NOT_FOUND", ""): 2}
    assert error_code(errors.ResourceExhausted("full")) == "UNAVAILABLE"
    assert error_code(errors.InvalidArgument("x")) == "INVALID_ARGUMENT" and error_code(KeyError()) == "INTERNAL"


def test_inference_log_counters_are_exported_only_while_the_log_is_on(tmp_path):
    from inferline import inferlog

    settings = ServerSettings(host="127.0.0.1", http_port=0, metrics_port=0, inference_log=str(tmp_path / "logs"),
                              hardware_log_interval_s=0)
    with ServerThread(make_repository(tmp_path), [start_rest, start_control], settings) as srv:
        port = srv.ports[1]
        assert not any(name.startswith("inferline_inference_log") for name in scrape(port))  # off: absent
        ilog = srv.dataplane.inference_log = inferlog.for_server(settings, 0)
        try:
            ilog.add_hardware(inferlog.HardwareSampler()())
            ilog.flush()
            m = scrape(port)
            stats = ilog.stats()
        finally:
            srv.dataplane.inference_log = None
            ilog.close()
    assert stats["hardware_written"] == 1
    for key, value in stats.items():
        name = "buffered_records" if key == "buffered" else f"{key}_total"
        assert m[f"inferline_inference_log_{name}"][frozenset()] == value, key
