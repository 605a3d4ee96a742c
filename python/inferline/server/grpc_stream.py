"""One ModelStreamInfer call: requests answered as they complete, with the work in hand bounded.

Work in hand (requests being answered, answers not yet written) is bounded by
MAX_STREAM_IN_FLIGHT requests and MAX_STREAM_BYTES bytes, and freed as each answer is written;
past either bound the stream is not read, so a client that does not read its answers is held
back by HTTP/2 flow control instead of growing the server's memory. With `idle_s` set, a
watchdog ends the stream UNAVAILABLE when it has had nothing in hand and no request for that
long, or when one answer has waited that long to be written (its reader is gone). The watchdog
is one task per stream that wakes once per `idle_s`: nothing is added per message.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Optional

import grpc

MAX_STREAM_IN_FLIGHT = 1024
"""Requests of one stream in hand (being answered, or answered and not yet written); reading pauses
beyond it."""
MAX_STREAM_BYTES = 16 << 20
"""Bytes of one stream's requests and answers in hand; reading pauses beyond it (one request always fits)."""


class Stream:
    """`answer(raw, context)` gives the serialized answer to one serialized request."""

    def __init__(self, answer: Callable[..., Awaitable[bytes]], requests, context, idle_s: Optional[float]):
        self.answer, self.requests, self.context, self.idle_s = answer, requests, context, idle_s
        self.answers: asyncio.Queue = asyncio.Queue()  # (answer, bytes it held), then None
        self.tasks: set = set()
        self.in_hand = self.bytes_in_hand = 0
        self.room = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.last_active = self.loop.time()
        self.writing_since: Optional[float] = None  # when the write under way began
        self.closed: Optional[str] = None  # why the watchdog ended the stream

    async def run(self) -> None:
        reader = asyncio.ensure_future(self._read())
        watchdog = asyncio.ensure_future(self._watch(asyncio.current_task())) if self.idle_s else None
        try:
            while (item := await self.answers.get()) is not None:
                out, size = item
                self.writing_since = self.loop.time()
                await self.context.write(out)
                self.writing_since = None
                self.last_active = self.loop.time()
                self.in_hand -= 1
                self.bytes_in_hand -= size
                self.room.set()
            await reader  # surfaces a failure to read the stream
        except asyncio.CancelledError:
            if self.closed is None:
                raise  # the call itself was cancelled
            await self.context.abort(grpc.StatusCode.UNAVAILABLE, self.closed)
        finally:
            for task in (reader, watchdog, *self.tasks):
                if task is not None:
                    task.cancel()

    async def _read(self) -> None:
        try:
            async for raw in self.requests:
                self.last_active = self.loop.time()
                while self.in_hand >= MAX_STREAM_IN_FLIGHT or (
                        self.in_hand and self.bytes_in_hand + len(raw) > MAX_STREAM_BYTES):
                    self.room.clear()
                    await self.room.wait()
                self.in_hand += 1
                self.bytes_in_hand += len(raw)
                task = asyncio.ensure_future(self._answer(raw))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            if self.tasks:
                await asyncio.wait(list(self.tasks))
        finally:
            self.answers.put_nowait(None)

    async def _answer(self, raw: bytes) -> None:
        out = await self.answer(raw, self.context)
        self.bytes_in_hand += len(out)
        self.answers.put_nowait((out, len(raw) + len(out)))

    async def _watch(self, runner: asyncio.Task) -> None:
        """Ends the stream (cancelling `runner`, which answers UNAVAILABLE) when idle: see the module."""
        idle_s = self.idle_s
        while True:
            now = self.loop.time()
            if self.writing_since is not None and now - self.writing_since >= idle_s:
                self.closed = (f"ModelStreamInfer: an answer went unread for {idle_s:g} s; stream closed "
                               f"(--stream-idle-timeout)")
            elif (self.writing_since is None and not self.in_hand and self.answers.empty()
                  and now - self.last_active >= idle_s):
                self.closed = f"ModelStreamInfer: no request for {idle_s:g} s; stream closed (--stream-idle-timeout)"
            if self.closed is not None:
                runner.cancel()
                return
            since = self.writing_since if self.writing_since is not None else self.last_active
            await asyncio.sleep(max(since + idle_s - now, idle_s / 10))
