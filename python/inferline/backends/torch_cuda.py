"""A torch module on a CUDA device, run by the core's device backend, with optional CUDA graphs.

``DeviceRunner(...)`` is the ``fn(inputs, outputs, stream)`` of ``_core.device_backend``
(backends/gpu.py has the contract). Per batch it wraps the core's buffers zero-copy
(``torch.as_tensor`` over ``__cuda_array_interface__``), runs the module under
``torch.inference_mode()`` on the executor's stream (``torch.cuda.ExternalStream``), copies each
result into its output buffer (``out.copy_``, dtype and shape checked) and returns without
waiting: the core orders its copy back after that work on the same stream.

CUDA graphs (``BackendSpec.cuda_graphs``):

    off      every batch launches its kernels from Python.
    buckets  a batch of r rows replays the graph of b rows, b the smallest power of two >= r
             (at most max_batch_size).
    fixed    every batch replays the graph of max_batch_size rows: the same kernels whatever
             the batch, so a row's result is bitwise the same at every batch size and position
             wherever the module's kernels are row-independent.

A graph is captured lazily per (input addresses, output addresses, bucket): the core's buffers
stay put for a model's lifetime, one set per executor. Capture follows warm-up runs on a side
stream, with ``capture_error_mode="thread_local"`` (other executors keep launching work). The
graphs replayed on one executor stream share a memory pool: they replay one after another on
that stream, never at once, which is what sharing a pool requires (graphs of two executors
sharing one would replay concurrently over the same intermediates). Rows r..b of the input
buffers hold rows of earlier batches, or zeros (zeroed once, when a graph first reads them, so
that no uninitialised bytes reach an index op); they are computed and never copied back. The
views inside the buffers that the core passes when it bisects a failing batch, and every batch
past MAX_GRAPHS graphs per model, run eagerly. A capture that fails is logged once and its key
runs eagerly from then on: graphs never fail a batch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from .signature import describe

log = logging.getLogger("inferline.backends.torchscript")

MAX_GRAPHS = 64
"""CUDA graphs captured per loaded model at most (each holds its kernels' parameters; the pool its memory)."""
WARMUP_RUNS = 3
"""Eager runs before a capture (torch's advice): lazy initialisation (cuBLAS handles, TorchScript's
profiling executor) happens there, not in the graph."""
_MISSING = object()
_CAPTURE_LOCK = threading.Lock()
"""One capture at a time in the process: torch.cuda.graph synchronises the device and empties
torch's cache before it captures, which must not happen while another thread is capturing."""


def _release_generator(torch, index: int) -> None:
    """Takes device `index`'s default CUDA generator out of capture mode after a failed capture.

    Capturing marks the generator as capturing until the capture ends; when ending an invalidated
    capture raises, torch never unmarks it, and every later random op on that device in the process
    (``torch.randn(..., device="cuda")`` in the user's own code too) fails with "Offset increment
    outside graph capture encountered unexpectedly". A clone of the state keeps its seed and offset
    and is not capturing."""
    try:
        gen = torch.cuda.default_generators[index]
        gen.graphsafe_set_state(gen.clone_state())
    except Exception as e:  # an older torch without graph-safe states: nothing to release there
        log.debug("could not reset the CUDA generator of device %d after a failed capture: %s", index, e)


class OutputMismatch(ValueError):
    """The module returned something other than the declared outputs."""


class DeviceRunner:
    """fn(inputs, outputs, stream) for ``_core.device_backend``: `module` on CUDA device `index`.
    `select(result) -> [tensor per declared output]` (raises OutputMismatch); `mode`: "off",
    "buckets" or "fixed"; `max_batch`: the model's max_batch_size."""

    def __init__(self, torch, module, index: int, output_names: Sequence[str], select: Callable[[Any], list],
                 mode: str, max_batch: int):
        self.torch = torch
        self.module = module
        self.index = int(index)
        self.device = torch.device("cuda", self.index)
        self.output_names = tuple(output_names)
        self.select = select
        self.mode = mode
        self.max_batch = int(max_batch)
        self._streams: dict = {}   # stream handle -> torch.cuda.ExternalStream
        self._pools: dict = {}     # stream handle -> graph memory pool of the graphs replayed there
        self._sides: dict = {}     # stream handle -> side stream its captures run on
        self._graphs: dict = {}    # (input ptrs, output ptrs, bucket) -> CUDAGraph, or None: runs eagerly
        self._filled: dict = {}    # input ptr -> rows from it that hold batch rows or zeros (not garbage)
        self._lock = threading.Lock()  # guards the counters and insertions into the tables above
        self._counts = {"graphs_captured": 0, "graph_replays": 0, "eager_runs": 0, "capture_failures": 0}
        self._warned: set = set()  # kinds of warning logged (once each)

    def stats(self) -> dict:
        """{"mode", "graphs_captured", "graph_replays", "eager_runs", "capture_failures"}."""
        with self._lock:
            return {"mode": self.mode, **self._counts}

    def __call__(self, inputs, outputs, stream: int) -> None:
        torch = self.torch
        ext = self._external(stream)
        rows = int(outputs[0].shape[0])
        with torch.cuda.device(self.index), torch.inference_mode():
            bucket = self._bucket(rows, inputs, outputs)
            if bucket:
                with torch.cuda.stream(ext):
                    if self._run_graph(inputs, outputs, bucket, stream, ext):
                        return
            # Entered afresh: a failed capture can leave its side stream current (torch.cuda.graph
            # skips restoring the stream when ending the capture raises).
            with torch.cuda.stream(ext):
                self._count("eager_runs")
                self.run_into(self._wrap(inputs), self._wrap(outputs))

    def run_into(self, ins: list, outs: list) -> None:
        """Runs the module on `ins` and copies its results into `outs` (on the current stream)."""
        torch = self.torch
        results = self.select(self.module(*ins))
        for name, out, t in zip(self.output_names, outs, results):
            if not isinstance(t, torch.Tensor):
                raise OutputMismatch(f"output {name!r} is a {type(t).__name__}, not a Tensor")
            if t.dtype != out.dtype or tuple(t.shape) != tuple(out.shape):
                raise OutputMismatch(f"output {name!r}: the module returned {_text(t)} for a {ins[0].shape[0]}-row "
                                     f"batch, the config declares {_text(out)}")
            out.copy_(t)

    # ---- graphs -------------------------------------------------------------------
    def _bucket(self, rows: int, inputs, outputs) -> int:
        """The rows of the graph for a batch of `rows` rows; 0: run eagerly."""
        if self.mode == "off":
            return 0
        if any(int(a.capacity_rows) < self.max_batch for a in (*inputs, *outputs)):
            return 0  # views inside the buffers: the core is bisecting a failing batch
        for a in inputs:  # rows [0, rows) hold this batch (see _pad)
            ptr = int(a.ptr)
            self._filled[ptr] = max(self._filled.get(ptr, 0), rows)
        bucket = self.max_batch if self.mode == "fixed" else min(self.max_batch, 1 << (rows - 1).bit_length())
        return bucket if bucket >= rows else 0

    def _run_graph(self, inputs, outputs, bucket: int, stream: int, ext) -> bool:
        key = (tuple(int(a.ptr) for a in inputs), tuple(int(o.ptr) for o in outputs), bucket)
        graph = self._graphs.get(key, _MISSING)
        if graph is None:
            return False
        self._pad(inputs, bucket)
        if graph is _MISSING:
            graph = self._capture(key, inputs, outputs, bucket, stream, ext)
            if graph is None:
                return False
        with self.torch.cuda.stream(ext):
            graph.replay()  # launches on the current stream: the executor's
        self._count("graph_replays")
        return True

    def _capture(self, key, inputs, outputs, bucket: int, stream: int, ext):
        """A graph of the module over `bucket` rows of these buffers, or None (then eager)."""
        torch = self.torch
        with self._lock:
            if self._counts["graphs_captured"] >= MAX_GRAPHS:
                self._graphs[key] = None
                self._warn("cap", f"{MAX_GRAPHS} CUDA graphs captured; further batch shapes and buffers run eagerly")
                return None
        ins = self._wrap([a.with_rows(bucket) for a in inputs])
        outs = self._wrap([o.with_rows(bucket) for o in outputs])
        side = self._sides.get(stream)
        if side is None:
            side = self._sides[stream] = torch.cuda.Stream(device=self.device)
        side.wait_stream(ext)  # the core's copies and preprocessing of this batch come first
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):  # errors here are the module's: they fail the batch
                    self.run_into(ins, outs)
        finally:
            ext.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        failure = None
        with _CAPTURE_LOCK:
            try:  # capturing records the work, runs none: the replay that follows computes this batch
                with torch.cuda.graph(graph, pool=self._pool(stream), stream=side, capture_error_mode="thread_local"):
                    self.run_into(ins, outs)
            except Exception as e:
                failure = e
                _release_generator(torch, self.index)  # under the lock: no other capture is under way
        if failure is not None:
            self._sides.pop(stream, None)  # a fresh side stream for the next capture
            with self._lock:
                self._graphs[key] = None
                self._counts["capture_failures"] += 1
            self._warn("capture", f"CUDA graph capture of a {bucket}-row batch failed, so such batches run eagerly: "
                       f"{type(failure).__name__}: {str(failure).strip()[:300]}")
            return None
        with self._lock:
            self._graphs[key] = graph
            self._counts["graphs_captured"] += 1
        return graph

    def _pad(self, inputs, bucket: int) -> None:
        """Zeroes rows of the input buffers that a `bucket`-row graph reads and no batch has written.
        Every call at the start of the buffers notes its rows first (_bucket), and the core bisects
        a failing batch within its rows: so no zeroed row is one a pending part of a batch reads."""
        for a in inputs:
            ptr = int(a.ptr)
            filled = self._filled.get(ptr, 0)
            if filled < bucket:
                view = self.torch.as_tensor(a.with_rows(bucket), device=self.device)
                view[filled:].zero_()  # on the executor's stream, before the graph reads it
                self._filled[ptr] = bucket

    def _pool(self, stream: int):
        pool = self._pools.get(stream)
        if pool is None:
            pool = self._pools[stream] = self.torch.cuda.graph_pool_handle()
        return pool

    # ---- helpers ------------------------------------------------------------------
    def _external(self, stream: int):
        ext = self._streams.get(stream)
        if ext is None:
            ext = self._streams[stream] = self.torch.cuda.ExternalStream(int(stream), device=self.device)
        return ext

    def _wrap(self, arrays) -> list:
        """Zero-copy tensors over the core's device buffers (``__cuda_array_interface__``)."""
        return [self.torch.as_tensor(a, device=self.device) for a in arrays]

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("cuda:%d: %s", self.index, message)


def _text(t) -> str:
    return describe(str(t.dtype).replace("torch.", ""), tuple(t.shape))
