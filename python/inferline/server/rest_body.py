"""Reading a REST request's body within the size limit, and aiohttp's connection log made quiet.

``read_body`` reads at most settings.max_message_bytes; past it the answer is 413 (BodyTooLarge)
and the connection stops reading: what the client still sends is dropped, not parsed. A
compressed body (gzip, deflate, br) is inflated here, not by aiohttp, STEP_BYTES at a time with
the event loop free in between, so a bomb costs the limit and no more and other requests keep
being answered. ``ServerLog`` turns each malformed HTTP request into one WARNING line, at most
one a second per kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Iterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from ..errors import InvalidArgument

try:
    import brotli
except ImportError:  # br bodies are then refused as an unsupported encoding
    brotli = None

log = logging.getLogger("inferline.server.rest")

STEP_BYTES = 256 * 1024  # a compressed body is inflated this much at a time, the event loop free in between
LINGER_S = 1.0  # after a 413: what the client still sends in this time is dropped, then the connection closes


class BodyTooLarge(InvalidArgument):
    """A request body over settings.max_message_bytes (HTTP 413)."""


async def read_body(request: web.Request, limit: int, what: str = "") -> bytearray:
    """The request body, at most `limit` bytes of it after decompression (see the module docstring).
    Past the limit this stops reading the connection (``RequestHandler.close``: what the client still
    sends is dropped, not parsed, and aiohttp's lingering read gets nothing until LINGER_S ends it)
    and raises BodyTooLarge, its message ending with `what` (which limit it was)."""
    declared, encoding = request.content_length, request.headers.get("Content-Encoding", "").strip().lower()
    inflater = _Inflater(encoding) if encoding not in ("", "identity") else None
    body = bytearray()
    if declared is None or declared <= limit:
        async for chunk in request.content.iter_any():
            for piece in inflater.steps(chunk) if inflater else (chunk,):
                body += piece
                if len(body) > limit:
                    break
                if inflater:
                    await asyncio.sleep(0)
            if len(body) > limit:
                break
        else:
            if inflater:
                inflater.finish()
            return body
    request.protocol.close()
    asyncio.get_running_loop().call_later(LINGER_S, request.content.feed_eof)
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes{what}")
    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes"
                       f"{f' once decompressed ({encoding})' if inflater else ''}{what}")


class _Inflater:
    """The decompressor of one Content-Encoding, which yields at most STEP_BYTES at a time."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        self._fed = False
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = None  # zlib or raw deflate, told by the first byte (as aiohttp does)
        elif encoding == "br" and brotli is not None:
            self._br = brotli.Decompressor()
        else:
            raise InvalidArgument(f"unsupported Content-Encoding {encoding!r} (supported: gzip, deflate"
                                  f"{', br' if brotli is not None else ''})")

    def steps(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        try:
            yield from (self._brotli_steps(data) if self.encoding == "br" else self._zlib_steps(data))
        except (zlib.error, getattr(brotli, "error", zlib.error)) as e:
            raise InvalidArgument(f"the request body is not valid {self.encoding} data: {e}") from None

    def _zlib_steps(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            self._z = zlib.decompressobj(zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS)
        self._fed = True
        while True:
            if self._z.eof:
                if data or self._z.unused_data:
                    raise InvalidArgument(f"the request body has data after the end of its {self.encoding} stream")
                return
            out = self._z.decompress(data, STEP_BYTES)
            yield out
            data = self._z.unconsumed_tail
            if not data and len(out) < STEP_BYTES and not self._z.unused_data:
                return  # all input taken, no output held back

    def _brotli_steps(self, data: bytes) -> Iterator[bytes]:
        self._fed = True
        if self._br.is_finished():
            raise InvalidArgument("the request body has data after the end of its br stream")
        yield self._br.process(data, output_buffer_limit=STEP_BYTES)
        while not self._br.can_accept_more_data():
            yield self._br.process(b"", output_buffer_limit=STEP_BYTES)

    def finish(self) -> None:
        done = not self._fed or (self._br.is_finished() if self.encoding == "br" else self._z.eof)
        if not done:
            raise InvalidArgument(f"the request body is not valid {self.encoding} data: it ends before its stream")


class ServerLog:
    """aiohttp's connection logger, made quiet for malformed requests (aiohttp's HttpProcessingError:
    a bad request line, header, chunk or encoding): one WARNING line, at most one per `period_s` for
    each kind, which counts the ones left out. Anything else goes to aiohttp's logger unchanged."""

    def __init__(self, period_s: float = 1.0):
        self._period_s = period_s
        self._last: dict = {}  # kind -> (time of its last line, how many were left out since)

    def __getattr__(self, name: str):  # debug, warning, ...
        return getattr(server_logger, name)

    def exception(self, msg, *args, exc_info=None, **kwargs) -> None:
        if not isinstance(exc_info, HttpProcessingError):
            server_logger.exception(msg, *args, exc_info=exc_info or True, **kwargs)
            return
        kind, now = type(exc_info).__name__, time.monotonic()
        last, left_out = self._last.get(kind, (None, 0))
        if last is not None and now - last < self._period_s:
            self._last[kind] = (last, left_out + 1)
            return
        self._last[kind] = (now, 0)
        what = " ".join(str(exc_info.message).split())[:160]
        more = f" ({left_out} more like it in the last {now - last:.0f} s not logged)" if left_out else ""
        log.warning("malformed HTTP request from %s answered %s: %s: %s%s", args[0] if args else "a client",
                    exc_info.code, kind, what, more)
