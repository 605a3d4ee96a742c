"""The two gRPC frontends side by side: the same requests (well-formed, nearly right, malformed,
random bytes; unary and on a stream) sent to a Python-frontend server and a native-frontend server
over one repository must get the same answers: status code and message, or the same response
message (outputs bit for bit, ids, versions, parameters). What a client sees cannot tell them apart.
"""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inferline.server.grpc_frontend import SERVICE
from inferline.server.proto import inference_pb2 as pb
from inferline.server.settings import ServerSettings
from server_fixtures import (ServerThread, grpc_starter, int64_model_path, make_repository, require_native_frontend,
                             slow_model_package)

from server.test_grpc import infer_requests, typed_requests

DIFF = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(python channel, native channel) to two servers over one repository."""
    require_native_frontend()
    root = tmp_path_factory.mktemp("differential")
    repo = make_repository(root, extra=[int64_model_path(root), slow_model_package(root)])
    settings_ = ServerSettings(host="127.0.0.1", grpc_port=0, max_message_bytes=1 << 20)
    with ServerThread(repo, [grpc_starter("python")], settings_) as py, \
            ServerThread(repo, [grpc_starter("native")], settings_) as native:
        channels = [grpc.insecure_channel(f"127.0.0.1:{s.ports[0]}") for s in (py, native)]
        yield channels
        for ch in channels:
            ch.close()


def unary(channel, data: bytes, timeout: float = 10):
    """("OK", parsed response) or (code name, details)."""
    call = channel.unary_unary(f"/{SERVICE}/ModelInfer", response_deserializer=pb.ModelInferResponse.FromString)
    try:
        return "OK", call(data, timeout=timeout)
    except grpc.RpcError as e:
        return e.code().name, e.details()


def streamed(channel, messages: list) -> list:
    """The stream's answers, sorted (they come as they complete): an answer as its serialized bytes, an
    error as its message (normalized; for a bad parameter only which model) with the request's names."""
    call = channel.stream_stream(f"/{SERVICE}/ModelStreamInfer",
                                 response_deserializer=pb.ModelStreamInferResponse.FromString)
    out = []
    for a in call(iter(messages), timeout=30):
        if not a.error_message:
            out.append((b"", canonical(a)))
            continue
        parameter = PARAMETER.match(a.error_message)
        message = f"model '{parameter.group(1)}' parameter" if parameter else normalized(a.error_message)
        r = a.infer_response
        out.append((message.encode(), canonical(pb.ModelInferResponse(model_name=r.model_name,
                                                                      model_version=r.model_version, id=r.id))))
    return sorted(out)


def canonical(message) -> bytes:
    return message.SerializeToString(deterministic=True)


# Known wording differences of the native frontend (same code, same model and version named):
# normalized on both sides so that anything else still fails. Each is reported to the native
# frontend's owner; drop its line once the native message matches.
WORDING = [
    # a shape no array can have ([2**62, 4, 0]): Python passes numpy's reshape error on ("cannot reshape
    # ..."), native numpy's size error ("array is too big ...", as numpy says for [2**63-1, 0])
    (re.compile(r"^model '(.*?)' input '(.*?)': shape (\[.*?\]) cannot be used \((?:cannot reshape|array is too "
                r"big).*\)$"), r"model '\1' input '\2': shape \3 unusable"),
]
PARAMETER = re.compile(r"^model '(.*?)' parameter '(.*?)': ")
UNICODE_ESCAPE = re.compile(r"\\U([0-9a-f]{8})|\\u([0-9a-f]{4})")


def normalized(details: str) -> str:
    """`details` with the known wording differences folded (WORDING) and \\u/\\U escapes of quoted
    text undone (Python's repr escapes every non-printable code point, the native one only ASCII ones)."""
    details = UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), details)
    for pattern, replacement in WORDING:
        details = pattern.sub(replacement, details)
    return details


def same(a, b) -> None:
    if a[0] == "OK" and b[0] == "OK":
        assert canonical(a[1]) == canonical(b[1]), (a[1], b[1])
        return
    assert a[0] == b[0], (a, b)
    pa, pb = PARAMETER.match(a[1]), PARAMETER.match(b[1])
    if pa and pb and pa.group(1) == pb.group(1) and pa.group(2) != pb.group(2):
        return  # several bad parameters: Python checks priority, timeout, routing_key in turn, native in wire order
    assert normalized(a[1]) == normalized(b[1]), (a, b)


@DIFF
@given(msg=st.one_of(infer_requests(), typed_requests()))
def test_valid_protobufs_get_the_same_answer(pair, msg):
    py, native = pair
    data = msg.SerializeToString()
    same(unary(py, data), unary(native, data))


@DIFF
@given(data=st.one_of(st.binary(max_size=300), infer_requests().map(lambda m: m.SerializeToString()[:-1])))
def test_malformed_bytes_get_the_same_answer(pair, data):
    py, native = pair
    same(unary(py, data), unary(native, data))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(msgs=st.lists(st.one_of(infer_requests().map(lambda m: m.SerializeToString()), st.binary(max_size=40)),
                     min_size=1, max_size=6))
def test_streams_get_the_same_answers(pair, msgs):
    py, native = pair
    assert streamed(py, msgs) == streamed(native, msgs)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def hostile_shape(shape, contents: bool) -> bytes:
    """digits-mlp's input 'pixels' FP32 with `shape` written by hand (2**64 fits no int64 setter): with the raw
    bytes that shape asks for, or an empty typed contents."""
    field = lambda number, data: _varint(number << 3 | 2) + _varint(len(data)) + data  # noqa: E731
    tensor = field(1, b"pixels") + field(2, b"FP32") + field(3, b"".join(_varint(d) for d in shape))
    msg = pb.ModelInferRequest(model_name="digits-mlp").SerializeToString()
    if contents:
        return msg + field(5, tensor + field(5, b""))
    size = 4
    for d in shape:
        size *= d
    return msg + field(5, tensor) + field(7, bytes(size))


SHAPES = {"65 dimensions": [1] * 65, "[2**62, 4, 0]": [2**62, 4, 0], "[2**63-1, 0]": [2**63 - 1, 0],
          "[2**64, 0]": [2**64, 0]}


@pytest.mark.parametrize("contents", [False, True], ids=["raw", "contents"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_shapes_no_array_can_have_get_the_same_answer(pair, shape, contents, request):
    data = hostile_shape(shape, contents)
    a, b = (unary(ch, data) for ch in pair)
    assert a[0] == "INVALID_ARGUMENT"
    same(a, b)
    assert streamed(pair[0], [data]) == streamed(pair[1], [data])


def test_a_huge_model_name_gets_the_same_clipped_answer(pair):
    data = pb.ModelInferRequest(model_name="x" * (1 << 19)).SerializeToString()  # half the message limit
    for code, details in (unary(ch, data) for ch in pair):  # the wordings differ (WORDING), so their clipped tails
        assert code == "NOT_FOUND" and len(details) < 1200 and "characters in all]..." in details
        assert details.startswith("model 'xxxxxxxx") and details.endswith(("' is not being served", ")"))


def test_well_formed_requests_get_bit_identical_outputs(pair):
    rng = np.random.default_rng(11)
    for rows in (1, 3, 16):
        msg = pb.ModelInferRequest(model_name="digits-mlp", id=f"rows-{rows}")
        msg.inputs.add(name="pixels", datatype="FP32", shape=[rows, 64])
        msg.raw_input_contents.append((rng.random((rows, 64), dtype=np.float32) * 16).tobytes())
        msg.outputs.add(name="label")
        a, b = (unary(ch, msg.SerializeToString()) for ch in pair)
        assert a[0] == "OK"
        same(a, b)


CONTROL = [
    ("ServerLive", pb.ServerLiveRequest()), ("ServerReady", pb.ServerReadyRequest()),
    ("ServerMetadata", pb.ServerMetadataRequest()),
    *[(rpc, request_type(name=name, version=version))
      for rpc, request_type in (("ModelReady", pb.ModelReadyRequest), ("ModelMetadata", pb.ModelMetadataRequest),
                                ("ModelConfig", pb.ModelConfigRequest))
      for name, version in (("digits-mlp", ""), ("digits-mlp", "1"), ("digits-mlp", "7"), ("nope", ""), ("", ""))],
    ("RepositoryIndex", pb.RepositoryIndexRequest()), ("RepositoryIndex", pb.RepositoryIndexRequest(ready=True)),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="")),
    ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="nope")),
    ("TraceSetting", pb.TraceSettingRequest()), ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest()),
]


@pytest.mark.parametrize("rpc, message", CONTROL, ids=[f"{rpc}-{i}" for i, (rpc, _) in enumerate(CONTROL)])
def test_other_rpcs_get_the_same_answer(pair, rpc, message):
    def call(channel):
        method = channel.unary_unary(f"/{SERVICE}/{rpc}")
        try:
            return "OK", method(message.SerializeToString(), timeout=10)
        except grpc.RpcError as e:
            return e.code().name, e.details()

    assert call(pair[0]) == call(pair[1])


@pytest.mark.parametrize("service", ["", SERVICE, "digits-mlp", "nope"])
def test_health_checks_get_the_same_answer(pair, service):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def check(channel):
        try:
            return "OK", health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status
        except grpc.RpcError as e:
            return e.code().name, e.details()

    assert check(pair[0]) == check(pair[1])
