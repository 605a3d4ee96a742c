"""The load-test gate a canary passes before its first step.

The candidate version is loaded alone into a fresh, isolated Engine (no other model competes for
its CPU and queue) and driven open loop at twice the model's peak rate:

    rate, why = gate_rate(config.slo, observed_peak_rps)       # 2 x declared, observed or floor
    result = run_gate(registry, record, rate_rps=rate, slo=config.slo)
    if not result.passed:
        print(result.reason)  # "p99 latency 812.4 ms is above the SLO's 100 ms: measured ..."

Open loop means request i is sent at t0 + i / rate whether or not earlier requests have been
answered, and its latency counts from that scheduled time: a server that falls behind shows its
queueing delay in the latencies (no coordinated omission, unlike a closed loop of N clients that
waits for each answer before sending the next).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, Sequence, Tuple

import numpy as np

from ..config import SloConfig
from ..engine import Engine
from ..errors import InvalidArgument
from ..models import loader
from ..models.package import load_package

LATE_START_MS = 2.0
"""A send issued more than this after its scheduled time counts as a late start (the generator
fell behind; the latency still counts from the scheduled time)."""
TIMEOUT_P99_MULTIPLE = 10.0
"""run_gate counts a request not answered within this many times slo.p99_ms as an error."""
SYNTHETIC_ROWS = 64
"""Distinct seeded rows the gate cycles through when the package has no golden inputs."""
_ERROR_SAMPLES = 5


@dataclass(frozen=True)
class GateResult:
    """What the gate measured and whether the candidate met the SLO."""

    passed: bool
    """p99_ms <= slo_p99_ms and error_rate <= slo_max_error_rate (and some request was answered)."""
    rate_rps: float
    """The offered (scheduled) request rate."""
    seconds: float
    """How long sends were scheduled for."""
    sent: int
    """Requests sent (rate_rps x seconds, at least 1)."""
    answered: int
    """Requests answered successfully within the timeout."""
    errors: int
    """Requests that failed or were not answered within the timeout."""
    p50_ms: float
    """Median latency of the answered requests, from their scheduled send time (NaN if none)."""
    p99_ms: float
    """99th percentile (nearest rank) of the same latencies (NaN if none)."""
    error_rate: float
    """errors / sent."""
    late_starts: int
    """Sends the generator could not issue on time (more than LATE_START_MS late)."""
    slo_p99_ms: float
    """The SLO's p99 bound the result was held to."""
    slo_max_error_rate: float
    """The SLO's error-rate bound the result was held to."""
    reason: str
    """Why it failed, in words with the measured p99, error rate and request rate; "" if passed."""
    error_samples: Tuple[str, ...] = ()
    """The first few distinct error messages."""

    def to_dict(self) -> dict:
        """Plain JSON-safe data (NaN latencies become None; error_samples a list)."""
        d = dataclasses.asdict(self)
        d["error_samples"] = list(self.error_samples)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def gate_rate(slo: SloConfig, observed_peak_rps: Optional[float], floor_rps: float = 20.0) -> Tuple[float, str]:
    """The gate's rate: 2 x slo.peak_rps when declared, else 2 x the observed peak (of the stable
    version, last hour; None, 0 or not finite: none observed), else 2 x ``floor_rps``; with a
    phrase saying which ("2 x the declared peak of 50 rps")."""
    if not (isinstance(floor_rps, (int, float)) and math.isfinite(floor_rps) and floor_rps > 0):
        raise InvalidArgument(f"gate_rate: floor_rps must be a number above 0, got {floor_rps!r}")
    if slo.peak_rps is not None:
        return 2.0 * slo.peak_rps, f"2 x the declared peak of {slo.peak_rps:g} rps (slo.peak_rps)"
    if observed_peak_rps is not None and math.isfinite(observed_peak_rps) and observed_peak_rps > 0:
        return 2.0 * observed_peak_rps, (f"2 x the stable version's observed peak of {observed_peak_rps:g} rps "
                                         f"(last hour; no slo.peak_rps declared)")
    return 2.0 * floor_rps, f"2 x the floor of {floor_rps:g} rps (no slo.peak_rps declared, no observed peak)"


def run_gate(registry, record, *, rate_rps: float, slo: SloConfig, seconds: Optional[float] = None) -> GateResult:
    """Loads ``record`` (a registry VersionRecord) alone into a fresh, isolated Engine, drives it
    open loop at ``rate_rps`` for ``seconds`` (default slo.gate_seconds), one row per request,
    then closes the engine. Inputs: the package's golden inputs when it has them, else seeded
    synthetic rows built from the signature. A request not answered within TIMEOUT_P99_MULTIPLE x
    slo.p99_ms counts as an error. Passes when p99 <= slo.p99_ms and error rate <=
    slo.max_error_rate.

    Blocks for about seconds + the timeout. The registry is only read (the package is fetched,
    verifying its sha256): the load outcome is not recorded. Raises models.loader.LoadFailed
    (naming the step) when the version does not load, InvalidArgument for a bad rate or duration.
    """
    seconds = slo.gate_seconds if seconds is None else seconds
    _check_positive(rate_rps, "rate_rps", record.where)
    _check_positive(seconds, "seconds", record.where)
    timeout_s = TIMEOUT_P99_MULTIPLE * slo.p99_ms / 1000.0
    root = registry.fetch(record)  # verifies every file's sha256
    package = load_package(root, record.name)
    engine = Engine()
    try:
        handle, _ = loader.load_into_engine(engine, package, record.version, root=root)
        rows = _request_rows(package, handle.config, root)
        timeout_us = max(1, int(timeout_s * 1e6))  # the core drops what waited past it, too

        def submit(inputs: dict) -> Awaitable:
            return handle.infer_async(inputs, timeout_us=timeout_us)

        measured = open_loop(submit, rate_rps, seconds, rows, timeout_s=timeout_s)
    finally:
        engine.close(drain=False)  # nothing waits for what may still be queued
    return _judge(measured, float(rate_rps), float(seconds), slo)


def open_loop(submit: Callable[[dict], Awaitable], rate_rps: float, seconds: float, inputs: Sequence,
              *, timeout_s: float = 10.0) -> dict:
    """Open-loop arrivals on a fresh asyncio loop: request i (of max(1, round(rate_rps x seconds)))
    is sent at t0 + i / rate_rps with ``inputs[i % len(inputs)]``, whether or not earlier ones
    have answered; its latency counts from that scheduled time (so queueing behind a slow server
    shows: no coordinated omission). ``submit(inputs) -> awaitable``. A request not answered
    within ``timeout_s`` of its scheduled time counts as an error (and is no longer awaited).

    Returns {"sent", "answered", "errors", "latencies_ms" (of the answered requests, in send
    order), "late_starts" (sends issued more than LATE_START_MS late), "error_samples" (the
    first few distinct messages)}. Blocks until every request is answered or timed out; called from a
    thread whose event loop is running, it runs the fresh loop in a helper thread.
    """
    _check_positive(rate_rps, "rate_rps", "open_loop")
    _check_positive(seconds, "seconds", "open_loop")
    _check_positive(timeout_s, "timeout_s", "open_loop")
    if not inputs:
        raise InvalidArgument("open_loop: inputs is empty (give at least one request's inputs)")
    count = max(1, round(rate_rps * seconds))
    run = lambda: asyncio.run(_drive(submit, 1.0 / rate_rps, count, list(inputs), timeout_s))  # noqa: E731
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inferline-gate") as pool:
        return pool.submit(run).result()


async def _drive(submit, period_s: float, count: int, inputs: list, timeout_s: float) -> dict:
    """The generator: sleeps until each send time, starts the send as a task, never waits for
    answers before the next send; then waits for every task (each bounded by its timeout)."""
    loop = asyncio.get_running_loop()
    late_s = LATE_START_MS / 1000.0
    latencies = [math.nan] * count
    out = {"sent": count, "answered": 0, "errors": 0, "late_starts": 0, "error_samples": []}

    def failed(message: str) -> None:
        out["errors"] += 1
        if len(out["error_samples"]) < _ERROR_SAMPLES and message not in out["error_samples"]:
            out["error_samples"].append(message)

    async def one(i: int, scheduled: float) -> None:
        if loop.time() - scheduled > late_s:
            out["late_starts"] += 1
        try:  # asyncio.wait_for, not asyncio.timeout_at: Python 3.9 is supported
            await asyncio.wait_for(submit(inputs[i % len(inputs)]), scheduled + timeout_s - loop.time())
        except asyncio.TimeoutError:
            failed(f"not answered within {timeout_s:g} s")
            return
        except Exception as e:  # the candidate's error, whatever it is, is a failed request
            failed(f"{type(e).__name__}: {e}")
            return
        latencies[i] = (loop.time() - scheduled) * 1000.0
        out["answered"] += 1

    t0 = loop.time() + 0.005  # a little lead, so that request 0 is not late already
    tasks = []
    for i in range(count):
        scheduled = t0 + i * period_s
        await asyncio.sleep(max(0.0, scheduled - loop.time()))  # 0: yield, so started sends run
        tasks.append(loop.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    out["latencies_ms"] = [v for v in latencies if not math.isnan(v)]
    return out


def _judge(measured: dict, rate_rps: float, seconds: float, slo: SloConfig) -> GateResult:
    """The GateResult of one open-loop run against ``slo``, with the reason in words."""
    sent, answered, errors = measured["sent"], measured["answered"], measured["errors"]
    lat = sorted(measured["latencies_ms"])
    p50, p99 = _nearest_rank(lat, 50), _nearest_rank(lat, 99)
    error_rate = errors / sent
    problems = []
    if not lat:
        problems.append("no request was answered")
    elif p99 > slo.p99_ms:
        problems.append(f"p99 latency {p99:.1f} ms is above the SLO's {slo.p99_ms:g} ms")
    if error_rate > slo.max_error_rate:
        problems.append(f"error rate {error_rate:.2%} is above the SLO's {slo.max_error_rate:.2%}")
    reason = ""
    if problems:
        reason = (f"{'; '.join(problems)}: measured p99 {p99:.1f} ms and error rate {error_rate:.2%} "
                  f"({errors} of {sent} requests) at {rate_rps:g} rps open loop for {seconds:g} s")
        if measured["late_starts"]:
            reason += (f"; {measured['late_starts']} of {sent} sends started late (the load generator "
                       f"fell behind)")
        if measured["error_samples"]:
            reason += f"; first error: {measured['error_samples'][0]}"
    return GateResult(passed=not problems, rate_rps=rate_rps, seconds=seconds, sent=sent, answered=answered,
                      errors=errors, p50_ms=p50, p99_ms=p99, error_rate=error_rate,
                      late_starts=measured["late_starts"], slo_p99_ms=float(slo.p99_ms),
                      slo_max_error_rate=float(slo.max_error_rate), reason=reason,
                      error_samples=tuple(measured["error_samples"]))


def _request_rows(package, config, root: str) -> list:
    """One-row input dicts: the golden inputs' rows, else SYNTHETIC_ROWS seeded rows."""
    golden = package.golden_arrays(root)
    arrays = golden[0] if golden is not None else loader.synthetic_inputs(config, SYNTHETIC_ROWS, seed=1)
    n = len(next(iter(arrays.values())))
    return [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in arrays.items()} for i in range(n)]


def _nearest_rank(sorted_values: list, q: float) -> float:
    """The q-th percentile by nearest rank (the smallest value with q% at or below it); NaN if none."""
    if not sorted_values:
        return math.nan
    return float(sorted_values[max(0, math.ceil(q / 100.0 * len(sorted_values)) - 1)])


def _check_positive(value, field: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{where}: {field} must be a number above 0, got {value!r}")
