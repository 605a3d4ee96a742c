"""REST frontend: KServe v2 HTTP/JSON and Triton's binary tensor extension, against the real tritonclient.http.

The server runs in this process on a free port, on its own event loop in a background thread
(server_fixtures.ServerThread), over a temporary registry holding the demo models and a tiny INT64 model.
"""

import asyncio
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

httpclient = pytest.importorskip("tritonclient.http")
import gevent  # noqa: E402  (tritonclient.http's async requests run on gevent)
from tritonclient.utils import InferenceServerException  # noqa: E402

import inferline as il  # noqa: E402
from helpers import make_config  # noqa: E402
from inferline import errors  # noqa: E402
from inferline.demo_models import demo_package_path  # noqa: E402
from inferline.models.service import open_registry, push  # noqa: E402
from inferline.rollout.recorder import Recorder  # noqa: E402
from inferline.server.dataplane import DataPlane  # noqa: E402
from inferline.server.rest import HEADER_LENGTH, http_status, start_rest  # noqa: E402
from inferline.server.settings import ServerSettings  # noqa: E402
from server_fixtures import ServerThread, int64_model_path, make_repository  # noqa: E402

TOKEN = "s3cret-token"
MAX_BYTES = 1 << 20
GOLDEN = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))
PIXELS = GOLDEN["inputs/pixels"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest")
    repo = make_repository(root, extra=[int64_model_path(root)])
    settings = ServerSettings(http_port=0, grpc_port=0, admin_token=TOKEN, max_message_bytes=MAX_BYTES)
    with ServerThread(repo, frontends=[start_rest], settings=settings) as srv:
        srv.url = f"127.0.0.1:{srv.ports[0]}"
        yield srv


def start_frontend(server, dataplane=None, **settings):
    """Another REST frontend on the server's loop, over `dataplane` or one for its own settings
    on the server's models."""
    s = ServerSettings(http_port=0, **settings)
    return server.call(start_rest(dataplane or DataPlane.for_settings(server.manager, s), s))


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def request(url, method, path, body=b"", headers=None, context=None):
    """One raw HTTP request: (status, headers, body)."""
    host, port = url.rsplit(":", 1)
    conn = (http.client.HTTPSConnection(host, int(port), context=context, timeout=30) if context else
            http.client.HTTPConnection(host, int(port), timeout=30))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def post_json(server, path, doc, headers=None):
    return request(server.url, "POST", path, json.dumps(doc).encode(), headers)


def error_of(status_headers_body):
    status, headers, body = status_headers_body
    assert headers["Content-Type"].startswith("application/json"), headers
    return status, json.loads(body)["error"]


def pixels_input(rows, binary=True):
    inp = httpclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    return inp


def wait_until(predicate, timeout=10.0):
    """Polls, yielding to gevent so that tritonclient's async requests get sent meanwhile."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        gevent.sleep(0.005)


# ---- health, metadata, config, stats ------------------------------------------------

def test_live_ready_and_not_ready_while_draining(server, client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-mlp") and client.is_model_ready("digits-mlp", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("digits-mlp", "9")
    assert request(server.url, "GET", "/v2/health/ready")[0] == 200
    server.dataplane.accepting = False
    try:
        status, _, body = request(server.url, "GET", "/v2/health/ready")
        assert status == 503 and json.loads(body) == {"ready": False}
        assert request(server.url, "GET", "/v2/models/digits-mlp/ready")[0] == 503
        assert client.is_server_live() and not client.is_server_ready()
    finally:
        server.dataplane.accepting = True


def test_server_and_model_metadata(client):
    meta = client.get_server_metadata()
    assert meta["name"] == "inferline" and meta["version"] == il.__version__
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])
    for version in ("", "1"):
        m = client.get_model_metadata("digits-mlp", version)
        assert m["name"] == "digits-mlp" and m["versions"] == ["1"] and m["platform"] == "onnxruntime_onnx"
        assert m["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
        assert m["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                                {"name": "label", "datatype": "INT64", "shape": [-1, 1]}]


def test_model_config(client):
    cfg = client.get_model_config("digits-mlp")
    assert cfg["name"] == "digits-mlp" and cfg["max_batch_size"] == 32 and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}]
    assert [o["data_type"] for o in cfg["output"]] == ["TYPE_FP32", "TYPE_INT64"]
    assert "dynamic_batching" in cfg and client.get_model_config("digits-mlp", "1") == cfg


def test_statistics(client):
    client.infer("digits-logreg", [pixels_input(PIXELS[:3])])
    stats = client.get_inference_statistics("digits-logreg")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("digits-logreg", "1")]
    assert stats[0]["inference_count"] >= 3 and stats[0]["inference_stats"]["success"]["count"] >= 1
    assert [s["version"] for s in client.get_inference_statistics("digits-logreg", "1")["model_stats"]] == ["1"]
    everything = client.get_inference_statistics()["model_stats"]
    assert {"int-sum", "digits-logreg", "digits-mlp"} <= {s["name"] for s in everything}
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert e.value.status() == "404" and "nope" in e.value.message()


def test_repository_index(server, client):
    index = client.get_model_repository_index()
    assert {"name": "digits-mlp", "version": "1", "state": "READY", "reason": ""} in index
    status, _, body = post_json(server, "/v2/repository/index", {"ready": True})
    assert status == 200 and all(m["state"] == "READY" for m in json.loads(body))
    assert error_of(post_json(server, "/v2/repository/index", {"ready": "yes"}))[0] == 400


# ---- inference -------------------------------------------------------------------------

@pytest.mark.parametrize("binary, compression", [(True, None), (False, None), (True, "gzip"), (False, "deflate")])
def test_infer_matches_golden(client, binary, compression):
    outputs = None if binary else [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("logits", "label")]
    result = client.infer("digits-mlp", [pixels_input(PIXELS, binary)], outputs=outputs, request_id="req-7",
                          request_compression_algorithm=compression, response_compression_algorithm=compression)
    np.testing.assert_allclose(result.as_numpy("logits"), GOLDEN["outputs/logits"], rtol=0, atol=1e-4)
    assert result.as_numpy("label").dtype == np.int64
    np.testing.assert_array_equal(result.as_numpy("label"), GOLDEN["outputs/label"])
    response = result.get_response()
    assert response["model_name"] == "digits-mlp" and response["model_version"] == "1" and response["id"] == "req-7"
    assert response["parameters"] == {"routed_to": "digits-mlp:1"}  # who answered; no fallback_reason
    has_binary = [("parameters" in o) for o in response["outputs"]]
    assert has_binary == [binary, binary]


def test_requested_output_subset_and_mixed_encodings(server, client):
    result = client.infer("digits-mlp", [pixels_input(PIXELS[:4])], model_version="1",
                          outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("logits") is None
    np.testing.assert_array_equal(result.as_numpy("label"), GOLDEN["outputs/label"][:4])
    # raw JSON: one output binary, one as JSON data, chosen per output over the request default
    doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": PIXELS[:2].tolist()}],
           "parameters": {"binary_data_output": True},
           "outputs": [{"name": "label", "parameters": {"binary_data": False}}, {"name": "logits"}]}
    status, headers, body = post_json(server, "/v2/models/digits-mlp/infer", doc)
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    n = int(headers[HEADER_LENGTH])
    head = json.loads(body[:n])
    label, logits = head["outputs"]
    assert label["data"] == GOLDEN["outputs/label"][:2].reshape(-1).tolist() and label["shape"] == [2, 1]
    assert logits["parameters"]["binary_data_size"] == 2 * 10 * 4 == len(body) - n
    np.testing.assert_allclose(np.frombuffer(body[n:], np.float32).reshape(2, 10), GOLDEN["outputs/logits"][:2],
                               atol=1e-4)
    # all JSON: nested data is accepted, the answer is flat row-major
    doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": PIXELS[:1].tolist()}]}
    status, headers, body = post_json(server, "/v2/models/digits-mlp/infer", doc)
    assert status == 200 and headers["Content-Type"] == "application/json" and HEADER_LENGTH not in headers
    answer = json.loads(body)
    logits = next(o for o in answer["outputs"] if o["name"] == "logits")
    assert logits["shape"] == [1, 10] and "id" not in answer
    np.testing.assert_allclose(logits["data"], GOLDEN["outputs/logits"][0], atol=1e-4)


def test_request_parameters_are_accepted(client):
    result = client.infer("digits-mlp", [pixels_input(PIXELS[:2])], priority=1, timeout=10_000_000,
                          parameters={"routing_key": "user-42", "note": "passed on"})
    np.testing.assert_array_equal(result.as_numpy("label"), GOLDEN["outputs/label"][:2])


@pytest.mark.parametrize("binary", [True, False])
def test_int64_model(client, binary):
    ids = np.array([[1, 2, 3, 4], [2**40, -5, 0, 7]], np.int64)
    inp = httpclient.InferInput("ids", [2, 4], "INT64")
    inp.set_data_from_numpy(ids, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("total", binary_data=binary),
               httpclient.InferRequestedOutput("doubled", binary_data=binary)]
    result = client.infer("int-sum", [inp], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("total"), ids.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(result.as_numpy("doubled"), ids * 2)
    assert result.as_numpy("total").dtype == np.int64


def test_many_concurrent_clients_get_their_own_answers(server):
    rows = [PIXELS[i:i + 1] for i in range(16)]
    c = httpclient.InferenceServerClient(server.url, concurrency=16)
    try:
        alone = [c.infer("digits-mlp", [pixels_input(r)]) for r in rows]
        pending = [(i % 16, c.async_infer("digits-mlp", [pixels_input(rows[i % 16])], request_id=str(i)))
                   for i in range(96)]
        for i, p in pending:
            result = p.get_result()
            # the same row answers bit-identically whatever batch it joined
            assert result.as_numpy("logits").tobytes() == alone[i].as_numpy("logits").tobytes()
            assert result.as_numpy("label")[0, 0] == GOLDEN["outputs/label"][i, 0]
    finally:
        c.close()


# ---- errors ------------------------------------------------------------------------------

def test_one_error_mapping():
    assert http_status(errors.ModelNotFound("m")) == 404
    assert http_status(errors.InvalidArgument("m")) == 400
    assert http_status(errors.ResourceExhausted("m")) == 503  # queue full -> UNAVAILABLE
    assert http_status(errors.Unavailable("m")) == 503
    assert http_status(errors.DeadlineExceeded("m")) == 504
    assert http_status(errors.InternalError("m")) == 500
    assert http_status(errors.InferlineError("m")) == 500


def test_client_errors_carry_status_and_name_the_tensor(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [pixels_input(PIXELS[:1])])
    assert e.value.status() == "404" and "'nope'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("digits-mlp", [pixels_input(PIXELS[:1])], model_version="9")
    assert e.value.status() == "404" and "version 9" in e.value.message()
    bad = httpclient.InferInput("pixels", [1, 64], "FP64")
    bad.set_data_from_numpy(PIXELS[:1].astype(np.float64))
    with pytest.raises(InferenceServerException) as e:
        client.infer("digits-mlp", [bad])
    assert e.value.status() == "400" and "'pixels'" in e.value.message() and "float64" in e.value.message()
    assert client.infer("digits-mlp", [pixels_input(PIXELS[:1])]).as_numpy("label").shape == (1, 1)


def _tensor(shape=(1, 64), **extra):
    return {"name": "pixels", "datatype": "FP32", "shape": list(shape), **extra}


DATA = PIXELS[:1].reshape(-1).tolist()
RAW = PIXELS[:1].tobytes()


def _binary(doc, raw, header=None):
    head = json.dumps(doc).encode()
    return head + raw, {HEADER_LENGTH: str(len(head)) if header is None else header}


def _plain(**doc):
    return json.dumps(doc).encode(), {}


BINARY_256 = {"inputs": [_tensor(parameters={"binary_data_size": 256})]}
BAD_REQUESTS = {
    "not json": ((b"{not json", {}), ["malformed JSON"]),
    "not an object": ((b"[1, 2]", {}), ["must be an object"]),
    "no inputs": ((b"{}", {}), ["'inputs' must be a list"]),
    "missing input": (_plain(inputs=[]), ["missing", "'pixels'"]),
    "unknown input": (_plain(inputs=[{**_tensor(data=DATA), "name": "pix"}]), ["unknown input 'pix'"]),
    "wrong dtype": (_plain(inputs=[_tensor(datatype="FP64", data=DATA)]), ["'pixels'", "float32", "float64"]),
    "BYTES": (_plain(inputs=[_tensor(datatype="BYTES", data=DATA)]), ["'pixels'", "BYTES"]),
    "wrong shape": (_plain(inputs=[_tensor((1, 63), data=DATA[:63])]), ["'pixels'", "[1, 63]"]),
    "shape not a list": (_plain(inputs=[_tensor(shape="1x64", data=DATA)]), ["'pixels'", "'shape'"]),
    "too few values": (_plain(inputs=[_tensor(data=DATA[:63])]), ["'pixels'", "63 values"]),
    "strings": (_plain(inputs=[_tensor(data=["a"] * 64)]), ["'pixels'", "strings"]),
    "out of range": (_plain(inputs=[_tensor(data=[1e300] * 64)]), ["'pixels'", "does not fit FP32"]),
    "no data": (_plain(inputs=[_tensor()]), ["'pixels'", "'data'"]),
    "unknown output": (_plain(inputs=[_tensor(data=DATA)], outputs=[{"name": "nope"}]), ["unknown output 'nope'"]),
    "bad priority": (_plain(inputs=[_tensor(data=DATA)], parameters={"priority": "high"}), ["'priority'"]),
    "binary short": (_binary(BINARY_256, RAW[:255]), ["'pixels'", "binary_data_size 256", "255 bytes"]),
    "binary long": (_binary(BINARY_256, RAW + b"xx"), ["258 bytes of binary data", "'pixels': 256"]),
    "binary size vs shape": (_binary({"inputs": [_tensor(parameters={"binary_data_size": 252})]}, RAW[:252]),
                             ["'pixels'", "252 bytes", "256"]),
    "negative size": (_binary({"inputs": [_tensor(parameters={"binary_data_size": -1})]}, RAW),
                      ["'pixels'", "binary_data_size"]),
    "header not a number": (_binary(BINARY_256, RAW, header="ten"), [HEADER_LENGTH, "'ten'"]),
    "header past the end": (_binary(BINARY_256, RAW, header="99999"), [HEADER_LENGTH, "99999"]),
    "binary without header": ((json.dumps(BINARY_256).encode() + RAW, {}), ["malformed JSON"]),
    "size without binary": ((json.dumps(BINARY_256).encode(), {}), ["'pixels'", HEADER_LENGTH]),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_answer_400_naming_what_is_wrong(server, case):
    (body, headers), words = BAD_REQUESTS[case]
    status, message = error_of(request(server.url, "POST", "/v2/models/digits-mlp/infer", body, headers))
    assert status == 400, message
    for w in words:
        assert w in message, message


def test_unknown_paths_methods_and_models(server):
    assert error_of(request(server.url, "GET", "/v2/nothing/here")) == (404, "no endpoint GET /v2/nothing/here")
    status, message = error_of(request(server.url, "GET", "/v2/models/digits-mlp/infer"))
    assert status == 405 and "GET" in message
    status, message = error_of(request(server.url, "GET", "/v2/models/nope"))
    assert status == 404 and "'nope'" in message
    status, message = error_of(request(server.url, "GET", "/v2/models/digits-mlp/versions/x/config"))
    assert status == 404 and "'x'" in message


def test_undecodable_compressed_body_is_400(server):
    status, message = error_of(request(server.url, "POST", "/v2/models/digits-mlp/infer", b"not gzip",
                                       {"Content-Encoding": "gzip"}))
    assert status == 400 and "gzip" in message
    assert request(server.url, "GET", "/v2/health/live")[0] == 200


def test_oversize_request_is_413(server, client):
    status, message = error_of(request(server.url, "POST", "/v2/models/digits-mlp/infer", b"{" * (MAX_BYTES + 1)))
    assert status == 413 and str(MAX_BYTES) in message

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(MAX_BYTES // 65536 + 2):
            yield b" " * 65536
    status, message = error_of(request(server.url, "POST", "/v2/models/digits-mlp/infer", chunks()))
    assert status == 413
    with pytest.raises(InferenceServerException) as e:
        client.infer("digits-mlp", [pixels_input(np.zeros((4200, 64), np.float32))])
    assert e.value.status() == "413"
    assert client.infer("digits-mlp", [pixels_input(PIXELS[:1])]).as_numpy("label").shape == (1, 1)


class Gate:
    """A Python backend that waits for `open` (so tests can fill a queue or run out a deadline)."""

    def __init__(self):
        self.opened, self.entered = threading.Event(), threading.Event()

    def __call__(self, inputs):
        self.entered.set()
        self.opened.wait(20)
        return {"y": inputs["x"] * 2}


class DirectModels:
    """The part of ModelManager and its Router that DataPlane.infer uses, over versions loaded
    straight into an engine."""

    def __init__(self, engine, **handles):
        self.handles = handles
        self.router = self
        self.engine = engine  # serves the handles (no routing policy: requests pass straight through)
        self.recorder = Recorder(engine)  # nothing watched: no rollout here

    def route(self, name, version="", routing_key=None):
        if name not in self.handles:
            raise errors.ModelNotFound(f"model {name!r} is not being served")
        return self.handles[name]

    def served(self):
        return [(h.name, h.version, True) for h in self.handles.values()]

    def fallback_config(self, name):
        return None  # no fallbacks here


@pytest.fixture
def gated(server):
    gate = Gate()

    def broken(inputs):
        raise RuntimeError("backend exploded")
    handles = {"gated": server.engine.load(make_config(name="gated", max_batch=1, delay_us=0, queue_capacity=2,
                                                       priority_levels=1), gate),
               "broken": server.engine.load(make_config(name="broken"), broken)}
    frontend = start_frontend(server, DataPlane(DirectModels(server.engine, **handles)))
    c = httpclient.InferenceServerClient(f"127.0.0.1:{frontend.port}", concurrency=12)
    yield gate, handles, frontend, c
    gate.opened.set()
    c.close()
    server.call(frontend.stop(2.0))
    for name in handles:
        server.engine.unload(name)


def x_input(value=1.0):
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return inp


def test_queue_full_is_503_and_accepted_requests_complete(gated):
    gate, handles, _, c = gated
    pending = [c.async_infer("gated", [x_input(i)]) for i in range(12)]
    wait_until(lambda: sum(handles["gated"].stats()[k] for k in ("requests", "rejected")) == 12)
    gate.opened.set()
    answered, refused = 0, 0
    for i, p in enumerate(pending):
        try:
            assert p.get_result().as_numpy("y")[0, 0] == 2 * i
            answered += 1
        except InferenceServerException as e:
            assert e.status() == "503" and "queue full" in e.message()
            refused += 1
    assert answered >= 1 and refused == handles["gated"].stats()["rejected"] >= 1


def test_deadline_is_504_and_backend_failure_is_500(gated):
    gate, _, _, c = gated
    first = c.async_infer("gated", [x_input()])
    wait_until(gate.entered.is_set)  # the executor is busy: the next request waits in the queue
    threading.Timer(0.1, gate.opened.set).start()
    with pytest.raises(InferenceServerException) as e:
        c.infer("gated", [x_input()], timeout=1000)  # µs
    assert e.value.status() == "504"
    assert first.get_result().as_numpy("y")[0, 0] == 2.0
    with pytest.raises(InferenceServerException) as e:
        c.infer("broken", [x_input()])
    assert e.value.status() == "500" and "backend exploded" in e.value.message()


def test_stop_finishes_in_flight_requests(gated, server):
    gate, _, frontend, c = gated
    in_flight = c.async_infer("gated", [x_input(3.0)])
    wait_until(gate.entered.is_set)
    stopping = asyncio.run_coroutine_threadsafe(frontend.stop(10.0), server.loop)
    gevent.sleep(0.1)
    gate.opened.set()
    assert in_flight.get_result().as_numpy("y")[0, 0] == 6.0
    stopping.result(10)
    with pytest.raises(OSError):
        request(f"127.0.0.1:{frontend.port}", "GET", "/v2/health/live")


# ---- repository: load / unload, admin token, TLS -----------------------------------------

def test_load_unload_need_the_admin_token(server, client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("digits-logreg", headers=headers)
        assert e.value.status() == "401" and "Bearer" in e.value.message()
    status, headers, _ = request(server.url, "POST", "/v2/repository/models/digits-logreg/load")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert client.is_model_ready("digits-logreg")
    client.unload_model("digits-logreg", headers=auth)
    try:
        assert not client.is_model_ready("digits-logreg")
        with pytest.raises(InferenceServerException) as e:
            client.infer("digits-logreg", [pixels_input(PIXELS[:1])])
        assert e.value.status() == "404"
        assert {"name": "digits-logreg", "version": "1", "state": "UNAVAILABLE"}.items() <= \
            next(m for m in client.get_model_repository_index() if m["name"] == "digits-logreg").items()
    finally:
        client.load_model("digits-logreg", headers=auth)
    assert client.is_model_ready("digits-logreg")
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("nope", headers=auth)
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        client.load_model("digits-logreg", headers=auth, config="{}")
    assert e.value.status() == "501"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_tls_and_no_token_when_none_is_set(server, certificate):
    cert, key = certificate
    frontend = start_frontend(server, tls_cert=cert, tls_key=key)
    url = f"127.0.0.1:{frontend.port}"
    try:
        trusted = ssl.create_default_context(cafile=cert)
        assert request(url, "GET", "/v2/health/live", context=trusted)[0] == 200
        status, _, body = request(url, "POST", "/v2/repository/models/int-sum/unload", context=trusted)
        assert status == 200 and body == b""
        assert request(url, "GET", "/v2/models/int-sum/ready", context=trusted)[0] == 503
        assert request(url, "POST", "/v2/repository/models/int-sum/load", context=trusted)[0] == 200
        assert request(url, "GET", "/v2/models/int-sum/ready", context=trusted)[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            request(url, "GET", "/v2/health/live")  # plain HTTP is not served on a TLS port
    finally:
        server.call(frontend.stop(2.0))


# ---- fuzz ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


FIELD_VALUES = {
    "name": st.sampled_from(["pixels", "pix", "", "label"]),
    "datatype": st.sampled_from(["FP32", "FP64", "FP16", "INT64", "UINT8", "BOOL", "BYTES", "fp32", ""]),
    "shape": st.lists(st.integers(-2, 70), max_size=4),
    "data": st.lists(st.floats(width=32) | st.integers(-300, 300) | st.booleans(), max_size=70),
    "binary_data_size": st.integers(-2, 300),
    "priority": st.integers(-2, 2**65), "timeout": st.integers(-2, 2**65), "binary_data": st.booleans(),
    "binary_data_output": st.booleans(), "id": st.text(max_size=4), "inputs": st.just([]), "outputs": st.just([]),
}


@st.composite
def infer_bodies(draw):
    """Mostly valid requests (binary or JSON data) with a few fields replaced; else any JSON, or any bytes."""
    kind = draw(st.sampled_from(["mutated"] * 6 + ["json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600)), draw(st.none() | st.integers(-3, 700).map(str))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode(), None
    binary = draw(st.booleans())
    tensor = _tensor(parameters={"binary_data_size": 256}) if binary else _tensor(data=DATA)
    output = {"name": "label", "parameters": {}}
    doc = {"inputs": [tensor], "outputs": [output], "parameters": {}}
    targets = [tensor, tensor.setdefault("parameters", {}), doc, doc["parameters"], output, output["parameters"]]
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(targets))
        key = draw(st.sampled_from(sorted(FIELD_VALUES)))
        target[key] = draw(FIELD_VALUES[key] | JSON_VALUES)
    raw = draw(st.sampled_from([RAW, RAW[:draw(st.integers(0, 255))], RAW + draw(st.binary(max_size=8))]))
    body, headers = _binary(doc, raw) if binary else (json.dumps(doc).encode(), {})
    header = draw(st.sampled_from([headers.get(HEADER_LENGTH)] * 4 + [None, "0", "-1", "1e3", str(len(body))]))
    return body, header


@settings(max_examples=250, deadline=None, database=None)
@given(case=infer_bodies())
def test_fuzz_infer_never_breaks_the_server(server, case):
    body, header = case
    status, headers, answer = request(server.url, "POST", "/v2/models/digits-mlp/infer", body,
                                      {HEADER_LENGTH: header} if header is not None else {})
    if status == 200:
        n = int(headers.get(HEADER_LENGTH, len(answer)))
        assert json.loads(answer[:n])["model_name"] == "digits-mlp"
    else:
        # 504: a timeout of a few µs passes before the request is queued; never 500: nothing unexpected escaped
        assert status in (400, 504), (status, answer)
        assert headers["Content-Type"].startswith("application/json") and json.loads(answer)["error"]


def test_server_still_answers_after_the_fuzz(client):
    result = client.infer("digits-mlp", [pixels_input(PIXELS)])
    np.testing.assert_array_equal(result.as_numpy("label"), GOLDEN["outputs/label"])


# ---- what a new user sees first: statistics and readiness reasons ----------------------

def test_statistics_count_served_traffic_only_and_stamp_the_last_inference(tmp_path):
    settings = ServerSettings(http_port=0, grpc_port=0)
    with ServerThread(make_repository(tmp_path), frontends=[start_rest], settings=settings) as srv:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{srv.ports[0]}")
        before = client.get_inference_statistics("digits-mlp")["model_stats"][0]
        assert before["inference_count"] == 0 and before["execution_count"] == 0  # warm-up is not counted
        assert before["last_inference"] == 0
        t0 = time.time() * 1000
        client.infer("digits-mlp", [pixels_input(PIXELS[:1])])
        after = client.get_inference_statistics("digits-mlp")["model_stats"][0]
        assert after["inference_count"] == 1 and after["execution_count"] == 1
        assert after["inference_stats"]["success"]["count"] == 1
        assert t0 - 5 <= after["last_inference"] <= time.time() * 1000 + 5
        client.close()


def test_readiness_says_why_a_model_does_not_serve(tmp_path):
    root = tmp_path / "root"
    repo = make_repository(root)
    settings = ServerSettings(http_port=0, grpc_port=0)
    with ServerThread(repo, frontends=[start_rest], settings=settings) as srv:
        url = f"127.0.0.1:{srv.ports[0]}"
        status, _, body = request(url, "GET", "/v2/models/digits-logreg/ready")
        assert status == 200 and json.loads(body) == {"name": "digits-logreg", "ready": True}
        assert error_of(request(url, "GET", "/v2/models/nope/ready"))[0] == 404
        status, message = error_of(request(url, "GET", "/v2/models/digits-logreg/versions/9/ready"))
        assert status == 404 and "has no version 9" in message

        pkg = tmp_path / "v2"  # version 2 goes live: version 1 is retired
        shutil.copytree(demo_package_path("digits-logreg"), pkg)
        data = json.loads((pkg / "model.json").read_text())
        data["labels"]["note"] = "v2"
        (pkg / "model.json").write_text(json.dumps(data))
        registry = open_registry(repo)
        push(registry, str(pkg), live=True)
        registry.close()
        wait_until(lambda: request(url, "GET", "/v2/models/digits-logreg/versions/1/ready")[0] == 503)
        status, _, body = request(url, "GET", "/v2/models/digits-logreg/versions/1/ready")
        assert json.loads(body)["reason"] == "version 1 is retired; only live and canary versions are served"

        client = httpclient.InferenceServerClient(url)
        client.unload_model("digits-logreg")  # no token needed: this server listens on loopback only
        status, _, body = request(url, "GET", "/v2/models/digits-logreg/ready")
        assert status == 503 and json.loads(body)["reason"].startswith("unloaded by request")
        index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
        assert index[("digits-logreg", "2")]["reason"].startswith("unloaded by request")
        client.close()


def test_control_is_refused_without_a_token_beyond_loopback(server):
    dataplane = DataPlane(server.manager, open_control=False)
    frontend = start_frontend(server, dataplane)
    try:
        status, message = error_of(request(f"127.0.0.1:{frontend.port}", "POST",
                                           "/v2/repository/models/digits-logreg/unload"))
        assert status == 403 and "--admin-token" in message
        assert server.manager.ready("digits-logreg")
    finally:
        server.call(frontend.stop(1.0))


# ---- the KServe Python SDK's REST client (kserve.InferenceRESTClient) ----------------

KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
import kserve
from kserve.protocol.infer_type import RequestedOutput

base, binary = sys.argv[1], sys.argv[2] == "1"
pixels = np.load(sys.argv[3])["inputs/pixels"]

async def run():
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        inp = kserve.InferInput("pixels", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels, binary_data=binary)
        outputs = [RequestedOutput(n, {"binary_data": binary}) for n in ("logits", "label")]
        request = kserve.InferRequest("digits-mlp", [inp], request_id="sdk-1", request_outputs=outputs)
        health = [await client.is_server_live(base), await client.is_server_ready(base),
                  await client.is_model_ready(base, "digits-mlp"), await client.is_model_ready(base, "no-such")]
        result = await client.infer(base, request, model_name="digits-mlp")
    finally:
        await client.close()
    got = {o.name: o.as_numpy().tolist() for o in result.outputs}
    print(json.dumps({"health": health, "model_name": result.model_name, "id": result.id, "outputs": got,
                      "label_dtype": str(result.outputs[[o.name for o in result.outputs].index("label")]
                                         .as_numpy().dtype)}))

asyncio.run(run())
"""


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_sdk_rest_client(server, binary):
    """Run in its own interpreter: kserve's protos and tritonclient's both define `inference.*`
    messages, and one process cannot hold both."""
    if subprocess.run([sys.executable, "-c", "import kserve"], capture_output=True).returncode != 0:
        pytest.skip("the KServe SDK (pip install kserve) is not installed")
    golden = os.path.join(demo_package_path("digits-mlp"), "golden.npz")
    out = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, f"http://{server.url}", "1" if binary else "0", golden],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["health"] == [True, True, True, False]
    assert doc["model_name"] == "digits-mlp" and doc["id"] == "sdk-1"
    np.testing.assert_allclose(np.array(doc["outputs"]["logits"], np.float32), GOLDEN["outputs/logits"],
                               rtol=0, atol=1e-4)
    assert doc["label_dtype"] == "int64"
    np.testing.assert_array_equal(np.array(doc["outputs"]["label"]), GOLDEN["outputs/label"])
