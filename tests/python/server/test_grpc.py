"""The gRPC frontends against the real tritonclient (and raw grpc channels for what tritonclient cannot send).

One server per module and gRPC frontend (the ``grpc_frontend`` fixture: the Python one, then the
native one), in a background thread (server_fixtures.ServerThread), on a free port, serving a
fresh repository: the two demo models, "int-sum" (INT64 input) and "slow" (about 50 ms per row,
queue capacity 1). Both frontends must pass the same assertions: a client cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import queue
import time
import warnings

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from hypothesis import HealthCheck, given, settings, strategies as st
from tritonclient.utils import InferenceServerException

from inferline import errors
from inferline.demo_models import demo_package_path
from inferline.server.codec import CONTENTS_FIELD
from inferline.server.grpc_frontend import SERVICE, grpc_status
from inferline.server.proto import convert
from inferline.server.proto import inference_pb2 as pb
from inferline.server.settings import ServerSettings

from server_fixtures import ServerThread, free_port, grpc_starter, int64_model_path, make_repository, slow_model_package

with warnings.catch_warnings():  # imported by hypothesis's pytest plugin to report a failure; its
    warnings.simplefilter("ignore")  # dependencies warn (DeprecationWarning), which filterwarnings=error
    try:                               # would turn into an INTERNALERROR hiding the failing example
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:
        pass

MAX_MESSAGE = 1 << 20
with np.load(f"{demo_package_path('digits-mlp')}/golden.npz") as golden:
    PIXELS, LOGITS, LABELS = golden["inputs/pixels"], golden["outputs/logits"], golden["outputs/label"]
C = grpc.StatusCode


# ---- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    return make_repository(root, extra=[int64_model_path(root), slow_model_package(root)])


@pytest.fixture(scope="module")
def server(repository, grpc_frontend):
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, max_message_bytes=MAX_MESSAGE)
    with ServerThread(repository, [grpc_starter(grpc_frontend)], settings) as srv:
        yield srv


@pytest.fixture(scope="module")
def url(server):
    return f"127.0.0.1:{server.ports[0]}"


@pytest.fixture(scope="module")
def client(url):
    c = tc.InferenceServerClient(url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def channel(url):
    ch = grpc.insecure_channel(url)
    yield ch
    ch.close()


def rpc(channel, name, request_type=None, response_type=pb.ModelInferResponse):
    """A raw unary call; request_type None sends bytes as they are."""
    return channel.unary_unary(f"/{SERVICE}/{name}",
                               request_serializer=None if request_type is None else request_type.SerializeToString,
                               response_deserializer=response_type.FromString)


def infer_input(x, datatype="FP32", name="pixels"):
    inp = tc.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def raw_request(model="digits-mlp", x=PIXELS[:1], name="pixels", datatype="FP32", shape=None, raw=None, **kw):
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype,
                                                   shape=list(x.shape) if shape is None else shape)
    return pb.ModelInferRequest(model_name=model, inputs=[tensor],
                                raw_input_contents=[x.tobytes() if raw is None else raw], **kw)


def status_of(fn, *args, **kw):
    with pytest.raises(InferenceServerException) as e:
        fn(*args, **kw)
    return e.value.status(), e.value.message()


# ---- protocol -----------------------------------------------------------------------

def test_proto_field_numbers_match_tritonclient():
    """Every field and RPC of our .proto has tritonclient's number, type and label (the wire contract)."""
    theirs = descriptor_pool.Default()

    def check(mine, other, path):
        for f in mine.fields:
            t = other.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), f"{path}.{f.name}"
            if f.enum_type is not None:
                assert {v.name: v.number for v in f.enum_type.values}.items() <= \
                    {v.name: v.number for v in t.enum_type.values}.items(), f"{path}.{f.name}"
            if f.message_type is not None:
                check(f.message_type, t.message_type, f"{path}.{f.name}")

    for name, d in pb.DESCRIPTOR.message_types_by_name.items():
        check(d, theirs.FindMessageTypeByName(f"inference.{name}"), name)
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    triton = theirs.FindServiceByName(SERVICE)
    assert sorted(m.name for m in ours.methods) == sorted(m.name for m in triton.methods)
    for m in ours.methods:
        t = triton.methods_by_name[m.name]
        assert (m.input_type.name, m.output_type.name, m.client_streaming, m.server_streaming) == \
            (t.input_type.name, t.output_type.name, t.client_streaming, t.server_streaming)


def test_live_ready(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits-mlp") and client.is_model_ready("digits-mlp", "1")
    assert not client.is_model_ready("digits-mlp", "9") and not client.is_model_ready("nope")


def test_server_metadata(client):
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "inferline" and md["version"]
    assert {"model_repository", "schedule_policy", "model_configuration", "statistics",
            "parameters"} <= set(md["extensions"])


def test_model_metadata(client):
    md = client.get_model_metadata("digits-mlp", as_json=True)
    assert md["name"] == "digits-mlp" and md["versions"] == ["1"] and md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in md["outputs"]] == \
        [("logits", "FP32", ["-1", "10"]), ("label", "INT64", ["-1", "1"])]
    assert client.get_model_metadata("int-sum", "1").inputs[0].datatype == "INT64"
    assert status_of(client.get_model_metadata, "nope")[0] == "StatusCode.NOT_FOUND"


def test_model_config(client):
    cfg = client.get_model_config("digits-mlp").config
    assert (cfg.name, cfg.backend, cfg.platform, cfg.max_batch_size) == \
        ("digits-mlp", "onnxruntime", "onnxruntime_onnx", 32)
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("pixels", 11, [64])]  # TYPE_FP32
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("logits", 11, [10]), ("label", 9, [1])]
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert not cfg.model_transaction_policy.decoupled
    assert client.get_model_config("digits-mlp", as_json=True)["config"]["max_batch_size"] == 32  # perf_analyzer's view
    assert status_of(client.get_model_config, "nope")[0] == "StatusCode.NOT_FOUND"


# ---- inference ----------------------------------------------------------------------

def test_infer_fp32_matches_golden(client):
    result = client.infer("digits-mlp", [infer_input(PIXELS)])
    np.testing.assert_allclose(result.as_numpy("logits"), LOGITS, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(result.as_numpy("label"), LABELS)
    for row in (0, 7, 15):
        one = client.infer("digits-mlp", [infer_input(PIXELS[row:row + 1])])
        np.testing.assert_allclose(one.as_numpy("logits"), LOGITS[row:row + 1], rtol=1e-4, atol=1e-4)
        assert one.as_numpy("label").item() == LABELS[row].item()


def test_response_names_who_answered(client):
    response = client.infer("digits-mlp", [infer_input(PIXELS[:1])]).get_response()
    assert response.model_version == "1"
    assert response.parameters["routed_to"].string_param == "digits-mlp:1"
    assert "fallback_reason" not in response.parameters  # the routed version answered itself


def test_infer_int64_input(client):
    ids = np.array([[1, 2, 3, 4], [-5, 10, 1 << 40, 0]], dtype=np.int64)
    result = client.infer("int-sum", [infer_input(ids, "INT64", "ids")])
    np.testing.assert_array_equal(result.as_numpy("total"), ids.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(result.as_numpy("doubled"), ids * 2)
    assert result.as_numpy("total").dtype == np.int64


def test_requested_outputs_subset(client):
    result = client.infer("digits-mlp", [infer_input(PIXELS[:4])], outputs=[tc.InferRequestedOutput("label")])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["label"] and len(response.raw_output_contents) == 1
    np.testing.assert_array_equal(result.as_numpy("label"), LABELS[:4])
    assert result.as_numpy("logits") is None


def test_id_echo_and_model_version(client):
    response = client.infer("digits-mlp", [infer_input(PIXELS[:1])], request_id="req-42").get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-42", "digits-mlp", "1")
    response = client.infer("digits-mlp", [infer_input(PIXELS[:1])], model_version="1").get_response()
    assert (response.id, response.model_version) == ("", "1")


def test_priority_timeout_and_routing_key_parameters(client, channel):
    ok = client.infer("digits-mlp", [infer_input(PIXELS[:1])], priority=1, timeout=10_000_000,
                      parameters={"routing_key": "user-7"})
    assert ok.as_numpy("label").item() == LABELS[0].item()
    status, message = status_of(client.infer, "digits-mlp", [infer_input(PIXELS[:1])], sequence_id=3)
    assert status == "StatusCode.INVALID_ARGUMENT" and "sequence" in message
    status, message = status_of(client.infer, "digits-mlp", [infer_input(PIXELS[:1])],
                                outputs=[tc.InferRequestedOutput("logits", class_count=3)])
    assert status == "StatusCode.INVALID_ARGUMENT" and "classification" in message
    msg = raw_request()
    msg.parameters["priority"].uint64_param = 2
    msg.parameters["timeout"].int64_param = 5_000
    msg.parameters["routing_key"].string_param = "user-7"
    msg.parameters["custom"].double_param = 0.5
    req = convert.decode_infer_request(msg, deadline_us=3_000)
    assert (req.priority, req.timeout_us, req.routing_key, req.parameters) == (2, 3_000, "user-7", {"custom": 0.5})
    msg.parameters["priority"].int64_param = 1
    msg.parameters["timeout"].int64_param = 0  # Triton: 0 = no timeout
    req = convert.decode_infer_request(msg)
    assert (req.priority, req.timeout_us) == (1, None)
    msg.parameters["timeout"].uint64_param = 2**64 - 1  # too long to be a deadline: none
    assert convert.decode_infer_request(msg).timeout_us is None
    msg.parameters["sequence_id"].int64_param = 7
    with pytest.raises(errors.InvalidArgument, match="sequences"):
        convert.decode_infer_request(msg)
    del msg.parameters["sequence_id"]
    assert rpc(channel, "ModelInfer", pb.ModelInferRequest)(msg).model_version == "1"
    msg.parameters["priority"].string_param = "high"
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", pb.ModelInferRequest)(msg)
    assert e.value.code() == C.INVALID_ARGUMENT and "priority" in e.value.details()


@pytest.mark.parametrize("key, kind, value", [
    ("timeout", "uint64_param", 2**64 - 1), ("timeout", "int64_param", 2**63 - 1), ("timeout", "int64_param", 0),
    ("priority", "uint64_param", 2**64 - 1), ("priority", "int64_param", 2**63 - 1), ("priority", "uint64_param", 0),
])
def test_parameter_extremes_are_answered(channel, key, kind, value):
    msg = raw_request()
    setattr(msg.parameters[key], kind, value)
    assert len(rpc(channel, "ModelInfer", pb.ModelInferRequest)(msg).raw_output_contents) == 2


def test_typed_contents_inputs(channel):
    call = rpc(channel, "ModelInfer", pb.ModelInferRequest)
    x = PIXELS[:3]
    tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[3, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = call(pb.ModelInferRequest(model_name="digits-mlp", id="typed", inputs=[tensor]))
    assert response.id == "typed" and [o.name for o in response.outputs] == ["logits", "label"]
    assert len(response.raw_output_contents) == 2 and not response.outputs[0].HasField("contents")
    logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))
    np.testing.assert_allclose(logits, LOGITS[:3], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], np.int64), LABELS[:3].ravel())

    ids = pb.ModelInferRequest.InferInputTensor(name="ids", datatype="INT64", shape=[1, 4])
    ids.contents.int64_contents.extend([1, 2, 3, -4])
    response = call(pb.ModelInferRequest(model_name="int-sum", inputs=[ids]))
    assert np.frombuffer(response.raw_output_contents[0], np.int64).tolist() == [2]


@pytest.mark.parametrize("datatype, field, values, match", [
    ("FP16", None, None, "raw_input_contents"),
    ("BYTES", "bytes_contents", [b"ab"], "BYTES"),
    ("FP32", "int64_contents", [1] * 64, "0 values"),
    ("INT8", "int_contents", [300] * 64, "INT8"),  # out of range
])
def test_typed_contents_errors(channel, datatype, field, values, match):
    tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype=datatype, shape=[1, 64])
    if field:
        getattr(tensor.contents, field).extend(values)
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", pb.ModelInferRequest)(pb.ModelInferRequest(model_name="digits-mlp", inputs=[tensor]))
    assert e.value.code() == C.INVALID_ARGUMENT and match in e.value.details() and "'pixels'" in e.value.details()


def test_streaming_many_requests_on_one_stream(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(200):
            row = i % len(PIXELS)
            client.async_stream_infer("digits-mlp", [infer_input(PIXELS[row:row + 1])], request_id=str(i))
            if i == 100:  # a failing request in the middle: an error answer, the stream goes on
                client.async_stream_infer("nope", [infer_input(PIXELS[:1])], request_id="bad")
    finally:
        client.stop_stream()  # waits for every answer
    got, errors = {}, []
    while not answers.empty():
        result, error = answers.get()
        if error is not None:
            errors.append(error)
        else:
            got[result.get_response().id] = result
    assert len(errors) == 1 and "nope" in errors[0].message()
    assert sorted(got, key=int) == [str(i) for i in range(200)]
    for i, result in got.items():
        row = int(i) % len(PIXELS)
        np.testing.assert_allclose(result.as_numpy("logits"), LOGITS[row:row + 1], rtol=1e-4, atol=1e-4)
        assert result.as_numpy("label").item() == LABELS[row].item()


def test_stream_answers_as_requests_complete(url):
    """A slow request first, a fast one second, on one stream: the fast answer comes first."""
    ch = grpc.insecure_channel(url)
    try:
        call = ch.stream_stream(f"/{SERVICE}/ModelStreamInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelStreamInferResponse.FromString)
        slow = raw_request("slow", np.ones((1, 1), np.float32), "x", id="slow")
        answers = list(call(iter([slow, raw_request(id="fast")]), timeout=30))
    finally:
        ch.close()
    assert [a.infer_response.id for a in answers] == ["fast", "slow"]
    assert not any(a.error_message for a in answers)


async def test_64_concurrent_clients(url):
    rng = np.random.default_rng(3)

    async def one_client(k):
        c = tca.InferenceServerClient(url)
        try:
            for _ in range(4):
                rows = rng.choice(len(PIXELS), size=int(rng.integers(1, 4)), replace=False)
                result = await c.infer("digits-mlp", [infer_input(PIXELS[rows])], request_id=f"{k}")
                np.testing.assert_allclose(result.as_numpy("logits"), LOGITS[rows], rtol=1e-4, atol=1e-4)
                np.testing.assert_array_equal(result.as_numpy("label"), LABELS[rows])
                assert result.get_response().id == str(k)
        finally:
            await c.close()

    await asyncio.wait_for(asyncio.gather(*(one_client(k) for k in range(64))), 60)


# ---- errors ----------------------------------------------------------------------------

def test_error_mapping_table():
    table = {errors.ModelNotFound: C.NOT_FOUND, errors.InvalidArgument: C.INVALID_ARGUMENT,
             errors.DeadlineExceeded: C.DEADLINE_EXCEEDED, errors.ResourceExhausted: C.UNAVAILABLE,
             errors.Unavailable: C.UNAVAILABLE, errors.InternalError: C.INTERNAL, errors.Cancelled: C.CANCELLED,
             errors.Unimplemented: C.UNIMPLEMENTED, errors.FailedPrecondition: C.FAILED_PRECONDITION,
             errors.AlreadyExists: C.ALREADY_EXISTS, errors.Unauthenticated: C.UNAUTHENTICATED,
             errors.InferlineError: C.UNKNOWN}
    for cls, code in table.items():
        assert grpc_status(cls("m")) == (code, "m")
    assert grpc_status(ZeroDivisionError("x"))[0] == C.INTERNAL


@pytest.mark.parametrize("case, code, match", [
    ("unknown model", "NOT_FOUND", "nope"),
    ("unknown version", "NOT_FOUND", "version 9"),
    ("wrong dtype", "INVALID_ARGUMENT", "'pixels'"),
    ("wrong shape", "INVALID_ARGUMENT", "'pixels'"),
    ("unknown input", "INVALID_ARGUMENT", "'other'"),
    ("unknown output", "INVALID_ARGUMENT", "'probs'"),
    ("missing input", "INVALID_ARGUMENT", "'ids'"),
])
def test_infer_errors(client, case, code, match):
    x = PIXELS[:1]
    call = {
        "unknown model": lambda: client.infer("nope", [infer_input(x)]),
        "unknown version": lambda: client.infer("digits-mlp", [infer_input(x)], model_version="9"),
        "wrong dtype": lambda: client.infer("digits-mlp", [infer_input(x.astype(np.float64), "FP64")]),
        "wrong shape": lambda: client.infer("digits-mlp", [infer_input(x[:, :63])]),
        "unknown input": lambda: client.infer("digits-mlp", [infer_input(x, name="other")]),
        "unknown output": lambda: client.infer("digits-mlp", [infer_input(x)],
                                               outputs=[tc.InferRequestedOutput("probs")]),
        "missing input": lambda: client.infer("int-sum", []),
    }[case]
    status, message = status_of(call)
    assert status == f"StatusCode.{code}" and match in message


@pytest.mark.parametrize("msg, match", [
    (raw_request(raw=b"\0" * 10), "10 bytes"),
    (raw_request(shape=[1, -64]), "negative"),
    (pb.ModelInferRequest(model_name="digits-mlp", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="FP32", shape=[1, 64])], raw_input_contents=[b"", b""]), "2 raw_input_contents"),
])
def test_raw_byte_size_errors(channel, msg, match):
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer", pb.ModelInferRequest)(msg)
    assert e.value.code() == C.INVALID_ARGUMENT and match in e.value.details()


def test_malformed_message_is_invalid_argument(channel):
    with pytest.raises(grpc.RpcError) as e:
        rpc(channel, "ModelInfer")(b"\xff\xff\xff\xff")
    assert e.value.code() == C.INVALID_ARGUMENT


def test_oversize_message_is_resource_exhausted(client):
    big = np.zeros((MAX_MESSAGE // 256 + 1, 64), np.float32)  # just over the 1 MiB limit
    status, _ = status_of(client.infer, "digits-mlp", [infer_input(big)])
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    ids = np.ones((30000, 4), np.int64)  # 960 kB in, 1.2 MB out: the answer is over the limit
    status, message = status_of(client.infer, "int-sum", [infer_input(ids, "INT64", "ids")])
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in message
    assert client.is_server_ready()


def test_deadlines(client):
    x = np.ones((1, 1), np.float32)
    status, message = status_of(client.infer, "slow", [infer_input(x, name="x")], timeout=1)  # 1 us
    assert status == "StatusCode.DEADLINE_EXCEEDED" and "slow" in message
    status, _ = status_of(client.infer, "slow", [infer_input(x, name="x")], client_timeout=0.005)
    assert status == "StatusCode.DEADLINE_EXCEEDED"


async def test_queue_full_is_unavailable(url):
    c = tca.InferenceServerClient(url)
    inp = infer_input(np.ones((1, 1), np.float32), name="x")

    async def one():
        try:
            await c.infer("slow", [inp])
            return "OK", ""
        except InferenceServerException as e:
            return e.status(), e.message()

    try:
        outcomes = await asyncio.gather(*(one() for _ in range(8)))
    finally:
        await c.close()
    codes = [code for code, _ in outcomes]
    assert "OK" in codes and "StatusCode.UNAVAILABLE" in codes
    assert set(codes) == {"OK", "StatusCode.UNAVAILABLE"}
    assert all("queue full" in m for code, m in outcomes if code != "OK"), outcomes


def test_internal_error_is_internal_and_server_goes_on(server, client):
    def broken(*a, **kw):
        raise ZeroDivisionError("boom")

    server.dataplane.model_config = broken  # instance attribute shadows the method
    try:
        status, message = status_of(client.get_model_config, "digits-mlp")
    finally:
        del server.dataplane.model_config
    assert status == "StatusCode.INTERNAL" and "ZeroDivisionError" in message
    assert client.get_model_config("digits-mlp").config.name == "digits-mlp"


def test_unimplemented_rpcs(client):
    for call in (client.get_system_shared_memory_status, client.get_cuda_shared_memory_status,
                 client.get_trace_settings, client.get_log_settings):
        status, message = status_of(call)
        assert status == "StatusCode.UNIMPLEMENTED" and "not supported" in message


# ---- repository, statistics, health, reflection ------------------------------------------

def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} >= {
        ("digits-mlp", "1", "READY"), ("digits-logreg", "1", "READY"), ("int-sum", "1", "READY"), ("slow", "1", "READY")}


def test_load_and_unload(client):
    client.unload_model("int-sum")
    assert not client.is_model_ready("int-sum")
    states = {m.name: m.state for m in client.get_model_repository_index().models}
    assert states["int-sum"] == "UNAVAILABLE"
    assert "int-sum" not in {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    status, _ = status_of(client.infer, "int-sum", [infer_input(np.zeros((1, 4), np.int64), "INT64", "ids")])
    assert status == "StatusCode.NOT_FOUND"
    client.load_model("int-sum")
    assert client.is_model_ready("int-sum")
    result = client.infer("int-sum", [infer_input(np.ones((1, 4), np.int64), "INT64", "ids")])
    assert result.as_numpy("total").item() == 4
    assert status_of(client.unload_model, "nope")[0] == "StatusCode.NOT_FOUND"
    assert status_of(client.load_model, "int-sum", config="{}")[0] == "StatusCode.UNIMPLEMENTED"


def test_ready_filter_of_repository_index(channel):
    call = rpc(channel, "RepositoryIndex", pb.RepositoryIndexRequest, pb.RepositoryIndexResponse)
    assert {m.state for m in call(pb.RepositoryIndexRequest(ready=True)).models} == {"READY"}


def test_admin_token(repository, grpc_frontend):
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, admin_token="s3cret")
    with ServerThread(repository, [grpc_starter(grpc_frontend)], settings) as srv:
        c = tc.InferenceServerClient(f"127.0.0.1:{srv.ports[0]}")
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            assert status_of(c.unload_model, "digits-logreg", headers=headers)[0] == "StatusCode.UNAUTHENTICATED"
            assert status_of(c.load_model, "digits-logreg", headers=headers)[0] == "StatusCode.UNAUTHENTICATED"
        assert c.is_model_ready("digits-logreg")
        c.unload_model("digits-logreg", headers={"authorization": "Bearer s3cret"})
        assert not c.is_model_ready("digits-logreg")
        c.load_model("digits-logreg", headers={"authorization": "bearer s3cret"})
        assert c.is_model_ready("digits-logreg")
        assert c.infer("digits-mlp", [infer_input(PIXELS[:1])]).as_numpy("label").item() == LABELS[0].item()
        c.close()


def test_statistics(client):
    client.infer("digits-mlp", [infer_input(PIXELS[:2])])
    stats = client.get_inference_statistics("digits-mlp").model_stats
    assert [(s.name, s.version) for s in stats] == [("digits-mlp", "1")]
    assert stats[0].inference_count >= 2 and stats[0].execution_count >= 1
    assert stats[0].inference_stats.success.count >= 1
    assert {s.name for s in client.get_inference_statistics().model_stats} >= {"digits-mlp", "digits-logreg"}
    assert status_of(client.get_inference_statistics, "nope")[0] == "StatusCode.NOT_FOUND"


def test_health_check(server, client, channel):
    stub = health_pb2_grpc.HealthStub(channel)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    def check(service):
        return stub.Check(health_pb2.HealthCheckRequest(service=service)).status

    assert [check(s) for s in ("", SERVICE, "digits-mlp")] == [serving] * 3
    with pytest.raises(grpc.RpcError) as e:
        check("nope")
    assert e.value.code() == C.NOT_FOUND
    server.dataplane.accepting = False  # as while shutting down
    try:
        assert [check(s) for s in ("", SERVICE, "digits-mlp")] == [not_serving] * 3
        assert not client.is_server_ready() and client.is_server_live()
    finally:
        server.dataplane.accepting = True
    client.unload_model("int-sum")
    try:
        assert check("int-sum") == not_serving
    finally:
        client.load_model("int-sum")
    assert check("int-sum") == serving


def test_health_watch_follows_readiness_and_ends_with_the_server(repository, grpc_frontend):
    """Watch of "": SERVING, NOT_SERVING while the data plane does not accept (the drain window), SERVING
    again. At stop the native frontend sends NOT_SERVING and ends the call OK; grpc.aio (the Python
    frontend) cancels it (UNAVAILABLE): both tell the watcher the server is gone."""
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    srv = ServerThread(repository, [grpc_starter(grpc_frontend)]).__enter__()
    stopped = False
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.ports[0]}")
        for service in ("", SERVICE):
            watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert next(watch).status == serving
            srv.dataplane.accepting = False
            assert next(watch).status == not_serving
            srv.dataplane.accepting = True
            assert next(watch).status == serving
        srv.__exit__(None, None, None)
        stopped = True
        try:
            seen = [answer.status for answer in watch]
        except grpc.RpcError as e:  # the call ended with the server
            seen = [e.code()]
        assert seen in ([not_serving], [C.UNAVAILABLE]), seen
        ch.close()
    finally:
        if not stopped:
            srv.__exit__(None, None, None)


def test_streams_are_bounded_in_number_and_idle_time(repository, grpc_frontend):
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, max_streams=1, stream_idle_timeout_s=0.5)
    with ServerThread(repository, [grpc_starter(grpc_frontend)], settings) as srv:
        ch = grpc.insecure_channel(f"127.0.0.1:{srv.ports[0]}")
        call = ch.stream_stream(f"/{SERVICE}/ModelStreamInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelStreamInferResponse.FromString)
        requests: queue.Queue = queue.Queue()
        first = call(iter(requests.get, None), timeout=30)
        requests.put(raw_request(id="one"))
        assert next(first).infer_response.id == "one"
        with pytest.raises(grpc.RpcError) as e:  # a second stream while the first is open
            list(call(iter([raw_request(id="two")]), timeout=10))
        assert e.value.code() == C.UNAVAILABLE and "--max-streams" in e.value.details()
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:  # then nothing is sent on the first: it is closed
            next(first)
        assert e.value.code() == C.UNAVAILABLE and "--stream-idle-timeout" in e.value.details()
        assert time.monotonic() - t0 < 5
        requests.put(None)
        again = list(call(iter([raw_request(id="three")]), timeout=10))  # its slot is free again
        assert [a.infer_response.id for a in again] == ["three"]
        ch.close()


async def test_a_stream_whose_answers_are_never_read_is_closed_unavailable(repository, grpc_frontend, request):
    """A client that writes and never reads: the server stops reading it (flow control), and once an
    answer has waited --stream-idle-timeout to be written, ends the stream UNAVAILABLE, saying so."""
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, stream_idle_timeout_s=1.0)
    raw = pb.ModelInferRequest(model_name="m" * 4096).SerializeToString()  # an error answer echoing the name
    with ServerThread(repository, [grpc_starter(grpc_frontend)], settings) as srv:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports[0]}") as ch:
            call = ch.stream_stream(f"/{SERVICE}/ModelStreamInfer")()
            sent = [0]

            async def write():
                for _ in range(30_000):
                    await call.write(raw)
                    sent[0] += 1

            writer = asyncio.ensure_future(write())
            while not writer.done():  # until no write completes for half a second: held back
                before = sent[0]
                await asyncio.wait([writer], timeout=0.5)
                if sent[0] == before:
                    break
            await asyncio.sleep(2.0)  # the server gives up on the stream; its status comes after the answers
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError:
                pass
            code, details = await call.code(), await call.details()
            writer.cancel()
    assert sent[0] < 30_000, "the stream was not held back"
    assert code == C.UNAVAILABLE and "went unread" in details and "--stream-idle-timeout" in details, (code, details)


def test_reflection_lists_and_describes_the_service(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE, "grpc.health.v1.Health"} <= set(db.get_services())
    service = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE)
    infer = service.methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert infer.input_type.fields_by_name["raw_input_contents"].number == 7
    assert service.methods_by_name["ModelStreamInfer"].client_streaming


# ---- the KServe SDK's gRPC client ----------------------------------------------------------

KSERVE_GRPC_CLIENT = """
import asyncio, json, sys
import grpc
import numpy as np
import kserve

url, binary = sys.argv[1], sys.argv[2] == "1"
pixels = np.load(sys.argv[3])["inputs/pixels"]

async def run():
    client = kserve.InferenceGRPCClient(url, channel_args=[("grpc.enable_retries", 0)], timeout=30)
    try:
        inp = kserve.InferInput("pixels", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels, binary_data=binary)
        health = [await client.is_server_live(), await client.is_server_ready(),
                  await client.is_model_ready("digits-mlp"), await client.is_model_ready("no-such")]
        result = await client.infer(kserve.InferRequest("digits-mlp", [inp], request_id="sdk-grpc-1"))
        try:
            await client.infer(kserve.InferRequest("no-such", [inp]))
            error = None
        except grpc.RpcError as e:
            error = [e.code().name, e.details()]
    finally:
        await client.close()
    got = {o.name: o.as_numpy().tolist() for o in result.outputs}
    print(json.dumps({"health": health, "model_name": result.model_name, "id": result.id, "outputs": got,
                      "error": error}))

asyncio.run(run())
"""


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_sdk_grpc_client(url, binary):
    """Run in its own interpreter: kserve's protos and tritonclient's both define `inference.*`
    messages, and one process cannot hold both."""
    import json
    import os
    import subprocess
    import sys

    if subprocess.run([sys.executable, "-c", "import kserve"], capture_output=True).returncode != 0:
        pytest.skip("the KServe SDK (pip install kserve) is not installed")
    golden = os.path.join(demo_package_path("digits-mlp"), "golden.npz")
    out = subprocess.run([sys.executable, "-c", KSERVE_GRPC_CLIENT, url, "1" if binary else "0", golden],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["health"] == [True, True, True, False]
    assert doc["model_name"] == "digits-mlp" and doc["id"] == "sdk-grpc-1"
    np.testing.assert_allclose(np.array(doc["outputs"]["logits"], np.float32), LOGITS, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.array(doc["outputs"]["label"]), LABELS)
    assert doc["error"][0] == "NOT_FOUND" and "no-such" in doc["error"][1]


# ---- fuzzing: no input crashes the decoder or the server ----------------------------------

CLEAN = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.DEADLINE_EXCEEDED}
DATATYPES = ["FP32", "INT64", "FP16", "BF16", "BYTES", "BOOL", "UINT8", "INT8", "FP64", "UINT64", "", "fp32", "X"]
VALUES = {"bool_contents": st.booleans(), "fp32_contents": st.floats(width=32), "fp64_contents": st.floats(),
          "bytes_contents": st.binary(max_size=4), "int_contents": st.integers(-2**31, 2**31 - 1),
          "int64_contents": st.integers(-2**63, 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
          "uint64_contents": st.integers(0, 2**64 - 1)}
PARAMS = {"bool_param": st.booleans(), "int64_param": st.integers(-2**63, 2**63 - 1),
          "string_param": st.text(max_size=4), "double_param": st.floats(), "uint64_param": st.integers(0, 2**64 - 1)}
# (input, datatype, row width, typed field, element size) of the test models' inputs
PLAUSIBLE = [("pixels", "FP32", 64, "fp32_contents", 4), ("ids", "INT64", 4, "int64_contents", 8)]


@st.composite
def tensors(draw, raw: bool):
    """An input tensor and its raw bytes: half of them nearly right for a test model, half anything."""
    if draw(st.booleans()):
        name, datatype, width, field, size = draw(st.sampled_from(PLAUSIBLE))
        shape = [draw(st.integers(0, 3)), draw(st.sampled_from([width, width, width - 1]))]
        n = max(shape[0] * shape[1] + draw(st.sampled_from([0, 0, 0, -1, 1])), 0)
    else:
        name, datatype = draw(st.sampled_from(["pixels", "ids", "", "zz"])), draw(st.sampled_from(DATATYPES))
        field, size = CONTENTS_FIELD.get(datatype), 4
        if field is None or not draw(st.integers(0, 3)):
            field = draw(st.sampled_from(sorted(VALUES)))
        shape = draw(st.lists(st.integers(-3, 70), max_size=3))
        n = draw(st.integers(0, 70))
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if raw:
        return tensor, draw(st.binary(min_size=n * size, max_size=n * size))
    if draw(st.integers(0, 5)):
        getattr(tensor.contents, field).extend(draw(st.lists(VALUES[field], min_size=n, max_size=n)))
    return tensor, None


@st.composite
def parameters(draw, msg):
    """Request parameters, mostly of the kind the server expects."""
    for key in draw(st.lists(st.sampled_from(["priority", "timeout", "routing_key", "other"]), max_size=2)):
        expected = {"priority": "uint64_param", "timeout": "int64_param", "routing_key": "string_param"}.get(key)
        kind = expected if expected and draw(st.integers(0, 3)) else draw(st.sampled_from(sorted(PARAMS)))
        if key == "timeout" and kind in ("int64_param", "uint64_param"):
            value = draw(st.sampled_from([0, 10_000_000]) | PARAMS[kind].filter(lambda v: v >= 0))
        else:
            value = draw(st.integers(0, 3) if key == "priority" and kind == expected else PARAMS[kind])
        setattr(msg.parameters[key], kind, value)


@st.composite
def infer_requests(draw):
    msg = pb.ModelInferRequest(model_name=draw(st.sampled_from(["digits-mlp", "int-sum", "", "nope"])),
                               model_version=draw(st.sampled_from(["", "", "1", "2", "x", "-1"])),
                               id=draw(st.text(max_size=8)))
    if draw(st.integers(0, 2)) == 0:  # a well-formed request with arbitrary values: reaches the engine
        name, datatype, width, field, size = draw(st.sampled_from(PLAUSIBLE))
        msg.model_name, msg.model_version = {"pixels": "digits-mlp", "ids": "int-sum"}[name], ""
        rows = draw(st.integers(1, 3))
        msg.inputs.add(name=name, datatype=datatype, shape=[rows, width])
        msg.raw_input_contents.append(draw(st.binary(min_size=rows * width * size, max_size=rows * width * size)))
        draw(parameters(msg))
        return msg
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):
        tensor, raw = draw(tensors(use_raw))
        msg.inputs.append(tensor)
        if raw is not None:
            msg.raw_input_contents.append(raw)
    if use_raw and draw(st.integers(0, 9)) == 0:
        msg.raw_input_contents.append(b"")  # one more than inputs
    for name in draw(st.lists(st.sampled_from(["logits", "label", "total", "x"]), max_size=2)):
        msg.outputs.add(name=name)
    draw(parameters(msg))
    return msg


@st.composite
def typed_requests(draw):
    """One tensor in typed contents, of any datatype that has a contents field, values over the field's range."""
    datatype = draw(st.sampled_from(sorted(CONTENTS_FIELD)))
    field = CONTENTS_FIELD[datatype] if draw(st.integers(0, 4)) else draw(st.sampled_from(sorted(VALUES)))
    values = draw(st.lists(VALUES[field], min_size=1, max_size=8))
    shape = [1, len(values) + draw(st.sampled_from([0, 0, 0, 1, -1]))]
    tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return pb.ModelInferRequest(model_name="digits-mlp", inputs=[tensor])


FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(msg=st.one_of(infer_requests(), typed_requests()))
def test_fuzz_decoder_raises_only_invalid_argument(msg):
    msg.parameters.clear()  # the server test covers them; here most requests should decode
    try:
        req = convert.decode_infer_request(msg)
    except errors.InvalidArgument:
        return
    assert all(isinstance(i.data, np.ndarray) and list(i.data.shape) == list(i.shape) for i in req.inputs)


@FUZZ
@given(msg=st.one_of(infer_requests(), typed_requests()))
def test_fuzz_server_answers_valid_protobufs_cleanly(channel, msg):
    try:
        rpc(channel, "ModelInfer", pb.ModelInferRequest)(msg, timeout=10)
    except grpc.RpcError as e:
        assert e.code() in CLEAN, (e.code(), e.details())


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), infer_requests().map(lambda m: m.SerializeToString()[:-1])))
def test_fuzz_server_answers_random_bytes_cleanly(channel, data):
    try:
        rpc(channel, "ModelInfer")(data, timeout=10)
    except grpc.RpcError as e:
        assert e.code() in CLEAN, (e.code(), e.details())


def test_server_still_answers_after_fuzzing(client):
    assert client.is_server_live()
    result = client.infer("digits-mlp", [infer_input(PIXELS[:2])])
    np.testing.assert_array_equal(result.as_numpy("label"), LABELS[:2])


def test_stream_survives_malformed_requests(url):
    """Garbage on a stream gets an error answer per message; the good requests around it are answered."""
    ch = grpc.insecure_channel(url)
    try:
        call = ch.stream_stream(f"/{SERVICE}/ModelStreamInfer", request_serializer=None,
                                response_deserializer=pb.ModelStreamInferResponse.FromString)
        good = raw_request(id="good").SerializeToString()
        answers = list(call(iter([good, b"\xff\xff", raw_request(raw=b"1").SerializeToString(), good]), timeout=30))
    finally:
        ch.close()
    assert len(answers) == 4
    assert sorted(bool(a.error_message) for a in answers) == [False, False, True, True]
    assert {a.infer_response.id for a in answers if not a.error_message} == {"good"}


def test_tls(repository, tmp_path, grpc_frontend):
    pytest.importorskip("cryptography")
    cert, key = self_signed_cert(tmp_path)
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, tls_cert=cert, tls_key=key)
    with ServerThread(repository, [grpc_starter(grpc_frontend)], settings) as srv:
        url = f"127.0.0.1:{srv.ports[0]}"
        secure = tc.InferenceServerClient(url, ssl=True, root_certificates=cert)
        assert secure.infer("digits-mlp", [infer_input(PIXELS[:1])]).as_numpy("label").item() == LABELS[0].item()
        secure.close()
        plain = tc.InferenceServerClient(url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=2)
        plain.close()


def self_signed_cert(tmp_path) -> tuple:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_port_shared_by_two_frontends(repository, grpc_frontend):
    """SO_REUSEPORT with --workers > 1: a second frontend (another worker, in real life) binds the same port."""
    port = free_port()
    settings = ServerSettings(host="127.0.0.1", grpc_port=port, workers=2)
    start = grpc_starter(grpc_frontend)
    with ServerThread(repository, [start], settings) as server:
        second = server.call(start(server.dataplane, settings))
        try:
            assert second.port == server.ports[0] == port
            for _ in range(4):  # whichever of the two answers, it answers right
                c = tc.InferenceServerClient(f"127.0.0.1:{port}")
                assert c.infer("digits-mlp", [infer_input(PIXELS[:1])]).as_numpy("label").item() == LABELS[0].item()
                c.close()
        finally:
            server.call(second.stop(0))


def test_single_worker_port_is_not_shared(server, grpc_frontend):
    """With one worker nothing else may bind the port: a second server fails instead of splitting traffic."""
    settings = ServerSettings(host="127.0.0.1", grpc_port=server.ports[0])
    with pytest.raises(OSError, match="cannot bind"):
        server.call(grpc_starter(grpc_frontend)(server.dataplane, settings))


def test_stop_refuses_new_calls(repository, grpc_frontend):
    srv = ServerThread(repository, [grpc_starter(grpc_frontend)]).__enter__()
    c = tc.InferenceServerClient(f"127.0.0.1:{srv.ports[0]}")
    assert c.is_server_live()
    srv.__exit__(None, None, None)
    with pytest.raises(InferenceServerException):
        c.is_server_live(client_timeout=2)
    c.close()
