"""The `native` transport of `inferline bench`: one client process's share of a gRPC load (unary or
ModelStreamInfer) sent by `_core.GrpcLoad` (C++, csrc/loadgen/) instead of grpc.aio.

    load = connect_native(plan)                     # channels connected
    result = run_native(plan, load, start_at)       # blocks for the run; Recorder.result()'s shape

Same load and the same recording as worker.py (closed or open loop, latency from the scheduled
send time, warm-up not recorded, errors by status name, fallback by a byte search, the same
histogram buckets, so the report merges its results with no conversion), at a fraction of the
CPU: the calls run on gRPC's own threads, and Python only waits. Its CPU per request is the whole
process's (every thread), over the window, read in C++ as `time.process_time()` reads it.
"""

from __future__ import annotations

import threading

from ..errors import InferlineError
from .histogram import DEFAULT_PRECISION
from .transport import INFER, STREAM

DEFAULT_CHANNELS = 4
"""Connections per client process unless --channels says otherwise (fewer when fewer calls are in flight)."""


def unavailable() -> str:
    """"" where this build has the native load generator; else why not."""
    try:
        from .. import _core
    except ImportError as e:  # pragma: no cover  (a source tree without its build)
        return f"inferline._core is not importable: {e}"
    return getattr(_core, "NATIVE_LOADGEN", "this build of inferline._core has no native load generator")


def channels_for(plan) -> int:
    if plan.channels:
        return plan.channels
    if plan.rate is not None:
        return DEFAULT_CHANNELS
    return max(1, min(DEFAULT_CHANNELS, plan.concurrency))


def connect_native(plan):
    """A `_core.GrpcLoad` for the plan, every channel connected."""
    from .. import _core

    if plan.target.protocol not in ("grpc", "stream"):
        raise InferlineError(f"the native transport speaks gRPC only, not {plan.target.protocol}")
    stream = plan.target.protocol == "stream"
    load = _core.GrpcLoad(
        plan.target.url, STREAM if stream else INFER, list(plan.payloads), stream=stream,
        channels=channels_for(plan), streams=plan.streams, concurrency=plan.concurrency,
        rate=plan.rate or 0.0, poisson=plan.poisson, phase_s=plan.phase_s, warmup_s=plan.warmup_s,
        duration_s=plan.duration_s, timeout_s=plan.timeout_s, max_outstanding=plan.max_outstanding,
        interval_s=plan.interval_s, precision=DEFAULT_PRECISION, seed=plan.seed)
    try:
        load.wait_ready(plan.timeout_s)
    except _core.CoreError as e:
        raise InferlineError(f"{plan.target.url}: {e}") from None
    return load


def run_native(plan, load, start_at: float, progress=None, slot: int = 0) -> dict:
    """Runs the load from `start_at` (time.monotonic) in a thread (the GIL released) while this one
    copies its progress counters to `progress` every 0.25 s."""
    out: dict = {}

    def run():
        try:
            out["result"] = load.run(start_at, DEFAULT_PRECISION)
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the caller's thread)
            out["error"] = e

    runner = threading.Thread(target=run, name="inferline-native-load", daemon=True)
    runner.start()
    while runner.is_alive():
        if progress is not None:
            progress[2 * slot], progress[2 * slot + 1] = load.progress()
        runner.join(0.25)
    if "error" in out:
        raise out["error"]
    result = out["result"]
    if progress is not None:
        progress[2 * slot], progress[2 * slot + 1] = result["answered_total"], sum(result["errors"].values())
    return result


def process_main_native(plan, slot: int, ready, go, start_value, progress, results) -> None:
    """worker.process_main for the native transport (no event loop)."""
    try:
        load = connect_native(plan)
    except BaseException as e:  # noqa: BLE001  (reported by the parent)
        ready.put(slot)
        results.put((slot, {"failed": f"{type(e).__name__}: {e}"}))
        return
    ready.put(slot)
    go.wait()
    try:
        results.put((slot, run_native(plan, load, start_value.value, progress, slot)))
    except BaseException as e:  # noqa: BLE001
        results.put((slot, {"failed": f"{type(e).__name__}: {e}"}))
