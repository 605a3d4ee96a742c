"""Runs a load across client processes and merges what they measured into one report.

    report = run_bench(BenchConfig(Target("127.0.0.1:8001", "grpc", "digits-mlp"), concurrency=64))

The parent encodes the requests once, spawns `procs` client processes (each its own event loop,
channel and share of the load; with the native transport, each a `_core.GrpcLoad` on gRPC's
threads: native.py), starts them at one common time, reads the server's CPU time over
the measured window when given its pid, prints a progress line, then adds up the processes'
histograms (exact: same buckets) and counters.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import InferlineError
from .payloads import Target, prepare
from .procstat import process_cpu_s
from .report import merge_results
from .worker import Plan, process_main


@dataclass
class BenchConfig:
    target: Target
    concurrency: int = 16             # closed loop: requests in flight, all processes together
    rate: Optional[float] = None      # open loop: requests/s offered, all processes together
    poisson: bool = False
    procs: int = 0                    # 0: default_procs()
    warmup_s: float = 1.0
    duration_s: float = 10.0
    inputs: Optional[str] = None      # .npz
    batch: int = 1
    distinct: int = 16
    seed: int = 0
    timeout_s: float = 30.0
    server_pid: Optional[int] = None
    streams: int = 0
    progress: bool = True
    transport: str = "auto"           # "native", "python" or "auto" (resolve_transport)
    channels: int = 0                 # native: connections per client process (0: its default)


def resolve_transport(config: BenchConfig) -> str:
    """"native" (C++ gRPC client, _core.GrpcLoad) for gRPC unary and stream where this build has it,
    else "python"; REST is always "python". An explicit "native" that cannot be is an error."""
    from .native import unavailable

    if config.transport == "python":
        return "python"
    if config.transport not in ("auto", "native"):
        raise InferlineError(f"--transport must be native or python, not {config.transport!r}")
    grpc = config.target.protocol in ("grpc", "stream")
    reason = unavailable() if grpc else "it speaks gRPC only (--protocol grpc or stream)"
    if config.transport == "native" and reason:
        raise InferlineError(f"--transport native: {reason}")
    return "python" if reason else "native"


def default_procs(config: BenchConfig, transport: str = "python") -> int:
    """Enough client processes that the client is not what limits: up to half the cores (the
    server usually shares the machine), at most one per 8 requests in flight for a closed loop
    or per 500 requests/s offered for an open one. The native transport runs on gRPC's threads:
    one process per 8 cores is plenty."""
    cores = os.cpu_count() or 1
    if transport == "native":
        return max(1, cores // 8)
    wanted = math.ceil(config.rate / 500) if config.rate else math.ceil(config.concurrency / 8)
    return max(1, min(wanted, max(1, cores // 2), 16))


def plans(config: BenchConfig, payloads, transport: str = "python") -> list:
    procs = config.procs or default_procs(config, transport)
    if config.rate is None:
        procs = min(procs, config.concurrency)
    out = []
    for i in range(procs):
        plan = Plan(config.target, payloads, warmup_s=config.warmup_s, duration_s=config.duration_s,
                    timeout_s=config.timeout_s, seed=config.seed * 1000 + i, streams=config.streams,
                    poisson=config.poisson, transport=transport, channels=config.channels)
        if config.rate is None:
            plan.concurrency = config.concurrency // procs + (i < config.concurrency % procs)
        else:
            plan.rate = config.rate / procs
            plan.phase_s = i / config.rate  # constant rate: the processes' schedules interleave evenly
        out.append(plan)
    return out


def run_bench(config: BenchConfig) -> dict:
    if config.rate is not None and config.rate <= 0:
        raise InferlineError("--rate must be > 0")
    if config.rate is None and config.concurrency < 1:
        raise InferlineError("--concurrency must be >= 1")
    if config.server_pid is not None:
        try:
            process_cpu_s(config.server_pid)  # fails now, not after the run, for a wrong pid
        except ProcessLookupError:
            raise InferlineError(f"--server-pid {config.server_pid}: no such process") from None
    if config.channels < 0:
        raise InferlineError("--channels must be >= 0")
    transport = resolve_transport(config)
    payloads = prepare(config.target, config.inputs, config.batch, config.distinct, config.seed)
    ps = plans(config, payloads, transport)
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_value = ctx.Value("d", 0.0, lock=False)
    progress = ctx.Array("q", 2 * len(ps), lock=False)
    procs = [ctx.Process(target=process_main, args=(plan, i, ready, go, start_value, progress, results), daemon=True)
             for i, plan in enumerate(ps)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=config.timeout_s + 60)
        start_at = time.monotonic() + 0.1
        start_value.value = start_at
        go.set()
        server_cpu = _watch(config, procs, start_at, progress, results)
        out = {}
        while len(out) < len(procs):
            slot, result = results.get(timeout=config.timeout_s + 30)
            out[slot] = result
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    failed = [r["failed"] for r in out.values() if "failed" in r]
    if failed:
        raise InferlineError(f"client process failed: {failed[0]}")
    report = merge_results(config, [out[i] for i in sorted(out)], server_cpu)
    report["procs"] = len(procs)
    report["transport"] = transport
    return report


def _watch(config: BenchConfig, procs, start_at: float, progress, results) -> Optional[float]:
    """Until the measured window ends: the progress line, and the server's CPU seconds over the window."""
    measure_from = start_at + config.warmup_s
    measure_to = measure_from + config.duration_s
    cpu0 = cpu1 = None
    tty = sys.stderr.isatty()
    last_print = 0.0
    while True:
        now = time.monotonic()
        if config.server_pid is not None and cpu0 is None and now >= measure_from:
            cpu0 = process_cpu_s(config.server_pid)
        if now >= measure_to:
            if config.server_pid is not None:
                cpu1 = process_cpu_s(config.server_pid)
            break
        if not all(p.is_alive() for p in procs) and not results.empty():
            break  # a client failed early: collect its error
        if config.progress and (tty or now - last_print >= 5) and now > start_at:
            last_print = now
            done, errors = sum(progress[0::2]), sum(progress[1::2])
            phase = "warm-up" if now < measure_from else "measuring"
            lead = "\r" if tty else ""
            print(f"{lead}[{now - start_at:6.1f}/{config.warmup_s + config.duration_s:.0f} s "
                  f"{phase}] {done} answered, {errors} errors", end="" if tty else "\n", file=sys.stderr,
                  flush=True)
        time.sleep(min(0.25, max(0.0, (measure_from if cpu0 is None and now < measure_from else measure_to) - now)))
    if config.progress and tty:
        print(file=sys.stderr)
    return None if cpu0 is None or cpu1 is None else cpu1 - cpu0


__all__ = ["BenchConfig", "run_bench", "default_procs", "resolve_transport", "replace"]
