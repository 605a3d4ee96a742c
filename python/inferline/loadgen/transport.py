"""The wire side of one client process: a sender per protocol, each sending pre-encoded bytes as
they are and classifying the answer without decoding it.

    status, fallback = await sender.send(payload)     # gRPC unary, REST: "OK" or why not
    pool.write(payload, key)                          # gRPC stream: answers come to on_answer(key, ...)

Status names: a gRPC status code's name (NOT_FOUND), `HTTP <code>` for REST, `STREAM: <message>`
for a ModelStreamInfer answer that carries an error message. A fallback answer is one whose
parameters carry `fallback_reason` (inferline sets it); it is found by a byte search in the
answer, which costs far less than parsing it.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Dict, Optional, Tuple

from .payloads import Target, with_id

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
FALLBACK = b"fallback_reason"
_ident = lambda b: b  # noqa: E731  (pre-encoded bytes in, raw bytes out)


def grpc_channel(url: str):
    import grpc

    # Unlimited message sizes: the generator must not refuse what the server may send.
    return grpc.aio.insecure_channel(url, options=[("grpc.max_receive_message_length", -1),
                                                   ("grpc.max_send_message_length", -1)])


class UnarySender:
    """KServe v2 ModelInfer over a raw grpc.aio channel method (identity (de)serializers)."""

    def __init__(self, target: Target, timeout_s: float):
        self.channel = grpc_channel(target.url)
        self.call = self.channel.unary_unary(INFER, request_serializer=_ident, response_deserializer=_ident)
        self.timeout_s = timeout_s

    async def ready(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout_s)

    async def send(self, payload: bytes) -> Tuple[str, bool]:
        import grpc

        try:
            answer = await self.call(payload, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            return e.code().name, False
        return "OK", FALLBACK in answer

    async def close(self) -> None:
        await self.channel.close()


class RestSender:
    """KServe v2 POST /v2/models/{name}[/versions/{v}]/infer with a pre-encoded JSON body."""

    def __init__(self, target: Target, timeout_s: float):
        import aiohttp

        self.url = target.rest_base + "/infer"
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=timeout_s))
        self.headers = {"Content-Type": "application/json"}

    async def ready(self, timeout_s: float) -> None:
        pass  # connections open on first use

    async def send(self, payload: bytes) -> Tuple[str, bool]:
        import aiohttp

        try:
            async with self.session.post(self.url, data=payload, headers=self.headers) as r:
                body = await r.read()
                if r.status != 200:
                    return f"HTTP {r.status}", False
                return "OK", FALLBACK in body
        except asyncio.TimeoutError:
            return "TIMEOUT", False
        except aiohttp.ClientError as e:
            return f"CONNECTION: {type(e).__name__}", False

    async def close(self) -> None:
        await self.session.close()


class StreamPool:
    """`streams` ModelStreamInfer calls on one channel. Each request gets an id (appended to its
    bytes); an answer is matched to its request by the echoed id, or, for an answer without one
    (a request refused before decoding), to the oldest request outstanding on that stream."""

    def __init__(self, target: Target, streams: int, on_answer: Callable[[object, str, bool], None]):
        self.channel = grpc_channel(target.url)
        self.method = self.channel.stream_stream(STREAM, request_serializer=_ident, response_deserializer=_ident)
        self.n = streams
        self.on_answer = on_answer
        self.calls: list = []
        self.outstanding: list = []   # per stream: {id: key}, oldest first
        self.readers: list = []
        self.next_id = 0
        self.failed: Optional[str] = None

    async def ready(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout_s)
        for i in range(self.n):
            self.calls.append(self.method())
            self.outstanding.append({})
            self.readers.append(asyncio.ensure_future(self._read(i)))

    def pending(self, stream: int) -> int:
        return len(self.outstanding[stream])

    async def write(self, stream: int, payload: bytes, key) -> None:
        """Sends one request on stream `stream`; `key` comes back with its answer."""
        self.next_id += 1
        rid = self.next_id
        self.outstanding[stream][rid] = key
        try:
            await self.calls[stream].write(with_id(payload, rid))
        except Exception as e:  # noqa: BLE001  (the stream ended: its reader reports the status)
            if self.outstanding[stream].pop(rid, None) is not None:
                self.on_answer(key, self.failed or f"STREAM_CLOSED: {type(e).__name__}", False)
            await asyncio.sleep(0)  # lets the reader finish; a closed loop must not spin without yielding

    async def _read(self, i: int) -> None:
        import grpc
        from ..server.proto import inference_pb2 as pb

        outstanding, on_answer = self.outstanding[i], self.on_answer
        try:
            async for raw in self.calls[i]:
                answer = pb.ModelStreamInferResponse.FromString(raw)
                rid = answer.infer_response.id
                key = outstanding.pop(int(rid), None) if rid.isdigit() else None
                if key is None and outstanding:
                    key = outstanding.pop(next(iter(outstanding)))
                if answer.error_message:
                    on_answer(key, "STREAM: " + answer.error_message[:80], False)
                else:
                    on_answer(key, "OK", "fallback_reason" in answer.infer_response.parameters)
        except grpc.aio.AioRpcError as e:
            self.failed = e.code().name
        except asyncio.CancelledError:
            self.failed = self.failed or "NO_ANSWER"
        # the stream ended: whatever it still owed is an error of the stream's status
        for key in list(outstanding.values()):
            on_answer(key, self.failed or "NO_ANSWER", False)
        outstanding.clear()

    async def finish(self, timeout_s: float) -> None:
        """No more requests: waits up to timeout_s for the answers still owed, then cancels."""
        for call in self.calls:
            try:
                await call.done_writing()
            except Exception:  # noqa: BLE001  (a stream that already failed)
                pass
        done, pending = await asyncio.wait(self.readers, timeout=timeout_s) if self.readers else ((), ())
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def close(self) -> None:
        await self.channel.close()


def make_sender(target: Target, timeout_s: float):
    return RestSender(target, timeout_s) if target.protocol == "rest" else UnarySender(target, timeout_s)


Errors = Dict[str, int]
