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
from typing import Any

from .. import _core
from ..errors import from_status


def _outcome(code: int, message: Any, outputs: tuple, names: tuple):
    if code == 0:
        return dict(zip(names, outputs)), None
    return None, from_status(code, message)


class ThreadDispatcher:
    """Resolves concurrent futures from a daemon thread."""

    def __init__(self):
        self.sink = _core.Sink()
        self.pending: dict = {}
        self._tags = itertools.count()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="inferline-completions", daemon=True)
        self._thread.start()

    def submit(self, model, inputs: dict, names: tuple, priority: int, deadline_us: int):
        fut = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # the core cannot un-queue a request
        tag = next(self._tags)
        self.pending[tag] = (fut, names, inputs)  # inputs stay alive until answered
        try:
            model.submit(inputs, tag, self.sink, priority, deadline_us)
        except BaseException:
            del self.pending[tag]
            raise
        return fut

    def _run(self):
        while not self._stop:
            if self.sink.wait(100):
                self._resolve(self.sink.drain())
        self._resolve(self.sink.drain())

    def _resolve(self, answers):
        pending = self.pending
        for tag, code, message, outputs, _queue_us, _compute_us in answers:
            fut, names, _inputs = pending.pop(tag)
            result, error = _outcome(code, message, outputs, names)
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)

    def close(self):
        self._stop = True
        self._thread.join()


class LoopDispatcher:
    """Resolves asyncio futures on their loop, via the sink's fd."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.sink = _core.Sink()
        self.pending: dict = {}
        self._tags = itertools.count()
        loop.add_reader(self.sink.fd, self._on_ready)

    def submit(self, model, inputs: dict, names: tuple, priority: int, deadline_us: int):
        fut = self.loop.create_future()
        tag = next(self._tags)
        self.pending[tag] = (fut, names, inputs)
        try:
            model.submit(inputs, tag, self.sink, priority, deadline_us)
        except BaseException:
            del self.pending[tag]
            raise
        return fut

    def _on_ready(self):
        pending = self.pending
        for tag, code, message, outputs, _queue_us, _compute_us in self.sink.drain():
            fut, names, _inputs = pending.pop(tag)
            if fut.done():  # the awaiting task was cancelled
                continue
            if code == 0:
                fut.set_result(dict(zip(names, outputs)))
            else:
                fut.set_exception(from_status(code, message))

    def close(self):
        if not self.loop.is_closed():
            try:
                self.loop.remove_reader(self.sink.fd)
            except (RuntimeError, ValueError):
                pass
        if self.pending:  # answers that arrived after the loop stopped listening
            self._on_ready_unlistened()

    def _on_ready_unlistened(self):
        for tag, *_ in self.sink.drain():
            self.pending.pop(tag, None)
