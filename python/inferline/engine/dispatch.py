"""Hands the core's answers to Python futures, waking Python once per batch.

The core queues answers on a ``_core.Sink`` and signals its eventfd once per
batch. ``ThreadDispatcher`` waits on it in a daemon thread and resolves
``concurrent.futures.Future`` objects; ``LoopDispatcher`` registers the fd with
an asyncio loop, so answers resolve asyncio futures on the loop's own thread
with no thread hop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading

from dataclasses import dataclass
from typing import Optional

from .. import _core
from ..errors import from_status


@dataclass(frozen=True)
class RoutedResult:
    """The answer of a routed request (``Engine.submit_routed``): who answered it, and why not
    the primary when a fallback did."""

    outputs: dict
    """{output name: array}, by the answering version's output names."""
    model: str
    """The model that answered (the requested one, or a fallback link's)."""
    version: int
    """The version that answered."""
    fallback_reason: Optional[str] = None
    """None when the primary answered, else why it did not: "error", "deadline", "overload",
    "breaker_open" or "unavailable" (route_policy.h FallbackReasonName)."""
    primary_version: int = 0
    """The version the request was routed to (its arm, or the version asked for), whoever answered."""


class _Dispatcher:
    """Shared by both dispatchers: tags, the pending table and resolving answers."""

    def __init__(self):
        self.sink = _core.Sink()
        # tag -> (future, output names, input arrays kept alive until answered); for a routed
        # request the names are a callable (answered model, version) -> output names.
        self.pending: dict = {}
        self._tags = itertools.count()

    def _new_future(self):
        raise NotImplementedError

    def submit(self, engine, name: str, version: int, inputs: dict, names: tuple, priority: int,
               timeout_us: int):
        """Submits to ``engine`` (a ``_core.Engine``); raises ``_core.CoreError`` if refused."""
        fut = self._new_future()
        tag = next(self._tags)
        keep: list = []  # the binding adds the arrays the core reads (copies too): alive until answered
        self.pending[tag] = (fut, names, keep)
        try:
            engine.submit(name, version, inputs, tag, self.sink, priority, timeout_us, keep)
        except BaseException:
            del self.pending[tag]
            raise
        return fut

    def submit_routed(self, router, name: str, version: int, routing_key, inputs: dict, names,
                      priority: int, timeout_us: int, cancellable: bool = False):
        """Submits through ``router`` (a ``_core.Router``); the future gets a ``RoutedResult``.
        ``names(model, version)`` gives the answering version's output names. ``cancellable``:
        cancelling the future withdraws the request from the core's queue (never computed if
        its batch has not run)."""
        fut = self._new_future()
        tag = next(self._tags)
        keep: list = []
        self.pending[tag] = (fut, names, keep)
        flag = _core.CancelFlag() if cancellable else None
        try:
            router.submit(name, version, routing_key, inputs, tag, self.sink, priority, timeout_us, keep, flag)
        except BaseException:
            del self.pending[tag]
            raise
        if flag is not None:
            fut.add_done_callback(lambda f: f.cancelled() and flag.cancel())
        return fut

    def _resolve(self, answers) -> None:
        pending = self.pending
        for tag, code, message, outputs, _queue_us, _compute_us, model, version, reason, primary in answers:
            fut, names, _keep = pending.pop(tag)
            if fut.done():  # an awaiting asyncio task was cancelled
                continue
            if code != 0:
                error = from_status(code, message)
                error.primary_version = primary  # routed requests: whose error it is (0 otherwise)
                fut.set_exception(error)
            elif type(names) is tuple:
                fut.set_result(dict(zip(names, outputs)))
            else:
                try:
                    result = dict(zip(names(model, version), outputs))
                except Exception as e:  # the answering version was unloaded meanwhile
                    fut.set_exception(e)
                    continue
                fut.set_result(RoutedResult(result, model, version, None if reason == "none" else reason, primary))


class ThreadDispatcher(_Dispatcher):
    """Resolves concurrent futures from a daemon thread."""

    def __init__(self):
        super().__init__()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="inferline-completions", daemon=True)
        self._thread.start()

    def _new_future(self):
        fut = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # the core cannot un-queue a request
        return fut

    def _run(self):
        while not self._stop:
            if self.sink.wait(100):
                self._resolve(self.sink.drain())
        self._resolve(self.sink.drain())

    def close(self):
        self._stop = True
        self._thread.join()


class LoopDispatcher(_Dispatcher):
    """Resolves asyncio futures on their loop, via the sink's fd."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.loop = loop
        loop.add_reader(self.sink.fd, self._on_ready)

    def _new_future(self):
        return self.loop.create_future()

    def _on_ready(self):
        self._resolve(self.sink.drain())

    def close(self):
        """Stops listening; answers still queued resolve their futures on the loop if it still runs."""
        answers = self.sink.drain()
        if self.loop.is_closed():
            self.pending.clear()
            return
        try:
            self.loop.remove_reader(self.sink.fd)
        except (RuntimeError, ValueError):
            pass
        if answers:
            self.loop.call_soon_threadsafe(self._resolve, answers)
