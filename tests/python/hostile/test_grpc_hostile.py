"""Hostile gRPC requests (issue 19, findings 3, 4, 5, 6 and 10): each one gets a clear status at once,
and, under the watch, normal REST and gRPC calls keep answering and the server's memory stays bounded.

Requests are raw bytes on grpc.aio channels (tritonclient would not send most of them). One server,
with a small stream limit and a short idle time so that findings 3 and 10 show within seconds.
"""

import asyncio
import math
import time

import grpc
import pytest

from hostile.harness import ROW, HostileServer, Watch
from inferline.server.proto import inference_pb2 as pb

METHOD = "/inference.GRPCInferenceService/"
MAX_STREAMS = 64
IDLE_S = 3.0
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = HostileServer(tmp_path_factory.mktemp("grpc-hostile"), "--max-streams", str(MAX_STREAMS),
                        "--stream-idle-timeout", str(IDLE_S))
    yield srv
    assert srv.stop() == 0


def channel(server, *options):
    """A channel with a connection of its own (each connection carries at most 128 calls)."""
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc}",
                                     options=[("grpc.use_local_subchannel_pool", 1), *UNLIMITED, *options])


def infer_request(outputs=(), model="digits-mlp") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(ROW.tobytes())
    for name in outputs:
        req.outputs.add(name=name)
    return req


async def unary(server, method: str, raw: bytes):
    """(status code, details) of one unary call with raw bytes."""
    async with channel(server) as ch:
        try:
            await ch.unary_unary(METHOD + method)(raw, timeout=30)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details()


async def stream_once(server, raw: bytes) -> pb.ModelStreamInferResponse:
    """The one answer of a ModelStreamInfer call that sends `raw`."""
    async with channel(server) as ch:
        call = ch.stream_stream(METHOD + "ModelStreamInfer")()
        await call.write(raw)
        await call.done_writing()
        answers = [pb.ModelStreamInferResponse.FromString(a) async for a in call]
        assert await call.code() == grpc.StatusCode.OK
    assert len(answers) == 1
    return answers[0]


# ---- finding 3: a stream whose answers are never read ------------------------------------------

async def test_a_stream_that_is_never_read_is_held_back_then_closed(server):
    """Before: every answer was queued (100k requests: +600 MiB) and the client could write on.
    Now at most MAX_STREAM_IN_FLIGHT answers wait, the stream stops being read (the client's writes
    block), and after the idle time the stream ends UNAVAILABLE. RSS bound: 60 MiB (before: ~5 KiB
    per request, 150+ MiB for the 30 000 tried here)."""
    raw = pb.ModelInferRequest(model_name="m" * 4096).SerializeToString()  # answered with an error echoing it
    tried = 30_000
    with Watch(server) as watch:
        async with channel(server) as ch:
            call = ch.stream_stream(METHOD + "ModelStreamInfer")()
            sent = [0]

            async def write():  # until a write blocks (a write cannot time out: that cancels the call)
                for _ in range(tried):
                    await call.write(raw)
                    sent[0] += 1

            writer = asyncio.ensure_future(write())
            while not writer.done():  # until no write completes for half a second
                before = sent[0]
                await asyncio.wait([writer], timeout=0.5)
                if sent[0] == before:
                    break
            held_at = sent[0]
            assert held_at < 10_000, f"the client wrote {held_at} requests: the stream was not held back"
            await asyncio.sleep(IDLE_S + 1)  # the server gives up on the stream; its status comes after the answers
            answers = await asyncio.wait_for(drain(call), 10)
            code = await call.code()
            details = await call.details()
            writer.cancel()
    watch.check(max_stall_s=1.0, max_rss_growth_mb=60)
    assert answers < held_at, (answers, held_at)  # answers were dropped with the stream
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert "went unread" in details and "--stream-idle-timeout" in details


async def drain(call) -> int:
    """Reads a stream's answers until it ends; returns how many there were."""
    answers = 0
    try:
        async for _ in call:
            answers += 1
    except grpc.aio.AioRpcError:
        pass
    return answers


# ---- finding 4: an output requested many times ---------------------------------------------

async def test_a_long_outputs_list_is_refused_before_any_work(server):
    """Before: 300 000 x 'logits' computed and encoded each (seconds of event loop, hundreds of MiB)."""
    raw = infer_request(["logits"] * 300_000).SerializeToString()
    with Watch(server) as watch:
        code, details = await unary(server, "ModelInfer", raw)
    watch.check(max_stall_s=1.0, max_rss_growth_mb=100)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:300])
    assert details == "model 'digits-mlp': 300000 outputs requested, but it has 2 (name each output at most once)"


@pytest.mark.parametrize("outputs", [["logits", "logits"], ["label", "logits", "label"]])
async def test_an_output_named_twice_is_refused(server, outputs):
    code, details = await unary(server, "ModelInfer", infer_request(outputs).SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith(f"model 'digits-mlp' output {outputs[-1]!r}: requested twice")


async def test_an_output_named_twice_on_a_stream_is_refused(server):
    answer = await stream_once(server, infer_request(["label"] * 40).SerializeToString())
    assert answer.error_message.startswith("model 'digits-mlp': 40 outputs requested, but it has 2")


async def test_each_output_named_once_is_answered(server):
    async with channel(server) as ch:
        out = pb.ModelInferResponse.FromString(
            await ch.unary_unary(METHOD + "ModelInfer")(infer_request(["label", "logits"]).SerializeToString()))
    assert [o.name for o in out.outputs] == ["label", "logits"]


# ---- finding 5: shapes NumPy cannot make --------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tensor_bytes(shape, contents: bool) -> bytes:
    """An InferInputTensor 'pixels' FP32 with `shape` written by hand (2**64 fits no int64 setter)."""
    packed = b"".join(_varint(d) for d in shape)
    field = lambda number, data: _varint(number << 3 | 2) + _varint(len(data)) + data  # noqa: E731
    tensor = field(1, b"pixels") + field(2, b"FP32") + field(3, packed)
    if contents:
        tensor += field(5, b"")  # an empty InferTensorContents: no values
    return tensor


def hostile_shape_request(shape, contents: bool) -> bytes:
    msg = pb.ModelInferRequest(model_name="digits-mlp").SerializeToString()
    msg += _varint(5 << 3 | 2) + _varint(len(_tensor_bytes(shape, contents))) + _tensor_bytes(shape, contents)
    if not contents:  # raw_input_contents: the bytes the shape asks for (none but for [1] * 65)
        data = bytes(4 * math.prod(shape))
        msg += _varint(7 << 3 | 2) + _varint(len(data)) + data
    return msg


SHAPES = {"65 dimensions": [1] * 65, "[2**62, 4, 0]": [2**62, 4, 0], "[2**63-1, 0]": [2**63 - 1, 0],
          "[2**64, 0]": [2**64, 0]}


@pytest.mark.parametrize("contents", [False, True], ids=["raw", "contents"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
async def test_a_shape_numpy_cannot_make_is_invalid_argument(server, shape, contents):
    code, details = await unary(server, "ModelInfer", hostile_shape_request(shape, contents))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "internal error" not in details and "digits-mlp" in details and "pixels" in details, details


async def test_a_shape_numpy_cannot_make_on_a_stream_is_an_error_message(server):
    answer = await stream_once(server, hostile_shape_request([2**62, 4, 0], contents=False))
    assert answer.error_message.startswith("model 'digits-mlp' input 'pixels': shape [4611686018427387904, 4, 0]")


# ---- finding 6: a 1 MiB model name --------------------------------------------------------

@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata"])
async def test_a_huge_model_name_is_not_found_with_a_short_message(server, method):
    name = "x" * (1 << 20)
    if method == "ModelInfer":
        raw = infer_request(model=name).SerializeToString()
    else:
        raw = pb.ModelMetadataRequest(name=name).SerializeToString()
    code, details = await unary(server, method, raw)
    assert code == grpc.StatusCode.NOT_FOUND, (code, details[:300])  # before: RESOURCE_EXHAUSTED (the trailer)
    assert len(details) < 1200 and details.startswith("model 'xxx")
    assert details.endswith("xxx' is not being served") and "characters in all" in details


async def test_a_huge_tensor_name_is_cut_in_the_message(server):
    req = infer_request()
    req.inputs[0].name = "p" * (1 << 20)
    req.inputs[0].datatype = "NOPE"
    code, details = await unary(server, "ModelInfer", req.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:300])
    assert f"input {'p' * 200!r}... (1048576 characters)" in details and len(details) < 1200


# ---- finding 10: many idle streams ---------------------------------------------------------

async def open_streams(server, channels: int, per_channel: int):
    chans = [channel(server) for _ in range(channels)]
    calls = [ch.stream_stream(METHOD + "ModelStreamInfer")() for ch in chans for _ in range(per_channel)]
    for call in calls:
        try:
            await call.wait_for_connection()
        except grpc.aio.AioRpcError:  # refused: the test looks at each call's status
            pass
    return chans, calls


async def ended(calls, wait_s: float) -> dict:
    """{status code: count} of the calls that ended within `wait_s`."""
    await asyncio.wait([asyncio.ensure_future(c.code()) for c in calls], timeout=wait_s)
    codes: dict = {}
    for call in calls:
        if call.done():
            code = await call.code()
            codes[code] = codes.get(code, 0) + 1
    return codes


async def test_streams_past_the_limit_are_refused_and_idle_ones_closed(server):
    """300 idle streams: MAX_STREAMS stay open (until the idle time closes them), the others are
    refused UNAVAILABLE at once. Before: all 300 held for good (10 000: +234 MiB). RSS bound: 40 MiB."""
    with Watch(server) as watch:
        chans, calls = await open_streams(server, 3, 100)
        t0 = time.monotonic()
        refused = await ended(calls, 1.0)
        assert refused == {grpc.StatusCode.UNAVAILABLE: 300 - MAX_STREAMS}, refused
        details = [await c.details() for c in calls if c.done()]
        assert details[0] == (f"ModelStreamInfer: this worker has {MAX_STREAMS} streams open, its limit "
                              f"(--max-streams); retry later, or send unary ModelInfer calls")
        idle = [c for c in calls if not c.done()]
        assert await ended(idle, IDLE_S + 5) == {grpc.StatusCode.UNAVAILABLE: MAX_STREAMS}
        assert IDLE_S - 0.5 < time.monotonic() - t0 < IDLE_S + 5
        assert await idle[0].details() == f"ModelStreamInfer: no request for {IDLE_S:g} s; stream closed " \
                                          f"(--stream-idle-timeout)"
        for ch in chans:
            await ch.close()
    watch.check(max_stall_s=1.0, max_rss_growth_mb=40)
    answer = await stream_once(server, infer_request(["label"]).SerializeToString())  # the slots are free again
    assert not answer.error_message and answer.infer_response.outputs[0].name == "label"


async def test_a_busy_stream_is_not_idle(server):
    """A stream that keeps sending (each request well within the idle time) stays open past it."""
    raw = infer_request(["label"]).SerializeToString()
    async with channel(server) as ch:
        call = ch.stream_stream(METHOD + "ModelStreamInfer")()
        t0 = time.monotonic()
        while time.monotonic() - t0 < IDLE_S * 1.5:
            await call.write(raw)
            answer = pb.ModelStreamInferResponse.FromString(await call.read())
            assert not answer.error_message, answer.error_message
            await asyncio.sleep(IDLE_S / 4)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
