"""One client process of `inferline bench`: closed or open loop over one sender, recording each
answer into histograms as it comes.

Only what is outstanding is held (a task per unanswered unary request, an id per unanswered
streamed one): answered requests leave nothing behind, so the heap stays flat and Python's cyclic
collector has nothing to pause the process for (bench/gpu/open_loop_gc.py measured ~100 ms stops
when every future was kept to the end).

Open loop: request k is scheduled at start + k / rate (or after exponential gaps: --poisson),
and its latency counts from that scheduled time, not from when it was actually sent, so a
stalled sender (or server) cannot hide its stall (no coordinated omission). The sender's lag
(actual send minus scheduled) is recorded too. Requests scheduled during the warm-up are sent
but not recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .histogram import Histogram
from .payloads import Target
from .transport import StreamPool, make_sender


@dataclass
class Plan:
    """One process's share of the load (picklable: it travels to a spawned process)."""
    target: Target
    payloads: List[bytes]
    concurrency: int = 1              # closed loop: requests in flight; open loop: stream count
    rate: Optional[float] = None      # open loop: requests/s of this process
    phase_s: float = 0.0              # open loop, constant rate: this process's offset in the schedule
    poisson: bool = False
    warmup_s: float = 1.0
    duration_s: float = 10.0
    timeout_s: float = 30.0
    max_outstanding: int = 10000      # open loop: past it the sender waits (and its lag shows it)
    interval_s: float = 1.0           # latency-over-time resolution
    seed: int = 0
    streams: int = 0                  # gRPC stream: ModelStreamInfer calls (0: from concurrency)
    transport: str = "python"         # "python" (grpc.aio, aiohttp) or "native" (_core.GrpcLoad, gRPC only)
    channels: int = 0                 # native: connections (0: native.channels_for)


@dataclass
class Recorder:
    measure_from: float
    measure_to: float
    interval_s: float
    latency: Histogram = field(default_factory=Histogram)
    lag: Histogram = field(default_factory=Histogram)
    series: dict = field(default_factory=dict)   # interval index -> Histogram
    errors: dict = field(default_factory=dict)   # status -> count (measured window)
    ok: int = 0
    fallback: int = 0
    sent_total: int = 0                           # every request, warm-up included
    answered_total: int = 0                       # every answer (any status), warm-up included

    def done(self, scheduled: float, status: str, fallback: bool) -> None:
        now = time.monotonic()
        self.answered_total += 1
        if not self.measure_from <= scheduled < self.measure_to:
            return
        if status != "OK":
            self.errors[status] = self.errors.get(status, 0) + 1
            return
        us = (now - scheduled) * 1e6
        self.ok += 1
        self.fallback += fallback
        self.latency.record(us)
        slot = int((scheduled - self.measure_from) / self.interval_s)
        h = self.series.get(slot)
        if h is None:
            h = self.series[slot] = Histogram()
        h.record(us)

    def result(self) -> dict:
        return {"latency": self.latency.to_dict(), "lag": self.lag.to_dict(), "errors": self.errors,
                "ok": self.ok, "fallback": self.fallback, "sent_total": self.sent_total,
                "answered_total": self.answered_total,
                "series": {k: h.to_dict() for k, h in self.series.items()}}


async def connect(plan: Plan, on_answer=None):
    """The plan's sender (gRPC unary, REST) or stream pool, connected."""
    if plan.target.protocol == "stream":
        streams = plan.streams or (min(plan.concurrency, 8) if plan.rate is None else 4)
        conn = StreamPool(plan.target, streams, on_answer)
    else:
        conn = make_sender(plan.target, plan.timeout_s)
    try:
        await conn.ready(plan.timeout_s)
    except BaseException:
        await conn.close()
        raise
    return conn


async def run_plan(plan: Plan, start_at: float, progress=None, slot: int = 0) -> dict:
    """Connects, runs the plan from `start_at` (time.monotonic); returns the results."""
    return await run_connected(plan, await _Connection.open(plan), start_at, progress, slot)


async def run_connected(plan: Plan, conn: "_Connection", start_at: float, progress=None, slot: int = 0) -> dict:
    rec = Recorder(start_at + plan.warmup_s, start_at + plan.warmup_s + plan.duration_s, plan.interval_s)
    end = rec.measure_to
    payloads = itertools.cycle(plan.payloads)
    ticker = asyncio.ensure_future(_report_progress(rec, progress, slot)) if progress is not None else None
    await _sleep_until(start_at)
    cpu0 = None

    def mark_cpu():
        nonlocal cpu0
        cpu0 = time.process_time()
    asyncio.get_running_loop().call_at(_loop_time(rec.measure_from), mark_cpu)
    try:
        if plan.target.protocol == "stream":
            conn.recorder = rec
            await _stream(plan, rec, payloads, start_at, end, conn)
        else:
            await _unary(plan, rec, payloads, start_at, end, conn.conn)
    finally:
        if ticker:
            ticker.cancel()
        await conn.conn.close()
    out = rec.result()
    out["cpu_s"] = time.process_time() - (cpu0 if cpu0 is not None else time.process_time())
    if progress is not None:
        progress[2 * slot], progress[2 * slot + 1] = rec.answered_total, sum(rec.errors.values())
    return out


async def _unary(plan: Plan, rec: Recorder, payloads, start_at: float, end: float, sender) -> None:
    if plan.rate is None:
        async def worker():
            while (t0 := time.monotonic()) < end:
                rec.sent_total += 1
                status, fallback = await sender.send(next(payloads))
                rec.done(t0, status, fallback)
        await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
        return
    tasks: set = set()

    async def one(payload, scheduled):
        status, fallback = await sender.send(payload)
        rec.done(scheduled, status, fallback)

    async for scheduled in _schedule(plan, rec, start_at, end, lambda: len(tasks)):
        task = asyncio.ensure_future(one(next(payloads), scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)  # an answered request leaves nothing behind
    if tasks:
        await asyncio.wait(tasks, timeout=plan.timeout_s + 5)


class _Connection:
    """A connected sender or stream pool; a stream's answers go to `recorder` once it is set."""

    def __init__(self):
        self.conn, self.recorder, self.room = None, None, None

    @classmethod
    async def open(cls, plan: Plan) -> "_Connection":
        self = cls()
        if plan.target.protocol == "stream" and plan.rate is None:
            self.room = asyncio.Semaphore(plan.concurrency)
        self.conn = await connect(plan, self.on_answer)
        return self

    def on_answer(self, scheduled, status, fallback):
        if self.room is not None:
            self.room.release()
        if scheduled is not None and self.recorder is not None:
            self.recorder.done(scheduled, status, fallback)


async def _stream(plan: Plan, rec: Recorder, payloads, start_at: float, end: float, conn: _Connection) -> None:
    pool, room, streams = conn.conn, conn.room, conn.conn.n
    if plan.rate is None:
        async def writer(i):
            while True:
                await room.acquire()
                t0 = time.monotonic()
                if t0 >= end:
                    return
                rec.sent_total += 1
                await pool.write(i, next(payloads), t0)
        await asyncio.gather(*(writer(i) for i in range(streams)))
    else:
        turn = itertools.cycle(range(streams))
        outstanding = lambda: sum(pool.pending(i) for i in range(streams))  # noqa: E731
        async for scheduled in _schedule(plan, rec, start_at, end, outstanding):
            await pool.write(next(turn), next(payloads), scheduled)
    await pool.finish(plan.timeout_s)


async def _schedule(plan: Plan, rec: Recorder, start_at: float, end: float, outstanding):
    """Yields each request's scheduled time once it is due; records the sender's lag."""
    rng = random.Random(plan.seed)
    interval = 1.0 / plan.rate
    scheduled = start_at + (rng.expovariate(plan.rate) if plan.poisson else plan.phase_s)
    while scheduled < end:
        now = time.monotonic()
        if now < scheduled:
            await asyncio.sleep(scheduled - now)
            now = time.monotonic()
        while outstanding() >= plan.max_outstanding and now < end + plan.timeout_s:
            await asyncio.sleep(0.001)
            now = time.monotonic()
        if rec.measure_from <= scheduled:
            rec.lag.record(max((now - scheduled) * 1e6, 1.0))
        rec.sent_total += 1
        yield scheduled
        scheduled += rng.expovariate(plan.rate) if plan.poisson else interval


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _loop_time(t_monotonic: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (t_monotonic - time.monotonic())


async def _report_progress(rec: Recorder, progress, slot: int) -> None:
    while True:
        progress[2 * slot], progress[2 * slot + 1] = rec.answered_total, sum(rec.errors.values())
        await asyncio.sleep(0.25)


def process_main(plan: Plan, slot: int, ready, go, start_value, progress, results) -> None:
    """Entry point of a spawned client process: connects, says ready, waits for the common start
    time, runs, and puts its results (or its error) on `results`."""
    if plan.transport == "native":
        from .native import process_main_native
        return process_main_native(plan, slot, ready, go, start_value, progress, results)

    async def main():
        conn = await _Connection.open(plan)
        ready.put(slot)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        return await run_connected(plan, conn, start_value.value, progress, slot)

    try:
        results.put((slot, asyncio.run(main())))
    except BaseException as e:  # noqa: BLE001  (reported by the parent; a client must not hang it)
        ready.put(slot)
        results.put((slot, {"failed": f"{type(e).__name__}: {e}"}))

