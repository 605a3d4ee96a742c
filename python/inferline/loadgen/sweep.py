"""The highest open-loop rate whose p99 meets a target: rates doubled (or halved) until one step
meets the target and another does not, then bisected between them; each step is a short run.

A step meets the target when its p99 is at most the target, at most `max_error_share` of its
requests failed, and the rate answered OK is at least 95% of the rate offered (a server that
falls behind does not meet it, however its p99 looks).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional, Tuple

from ..errors import InferlineError

ACHIEVED_SHARE = 0.95


def meets(report: dict, target_ms: float, max_error_share: float) -> bool:
    p99 = report["latency_ms"]["p99"]
    requests = report["requests"]
    errors = sum(report["errors"].values())
    return (p99 is not None and p99 <= target_ms and requests > 0 and errors <= max_error_share * requests
            and report["throughput_rps"] >= ACHIEVED_SHARE * report["offered_rps"])


def sweep(config, run: Callable, target_ms: float, start_rps: float = 100.0, max_steps: int = 12,
          resolution: float = 0.05, max_error_share: float = 0.001,
          on_step: Optional[Callable[[dict], None]] = None) -> Tuple[List[dict], Optional[dict]]:
    """Runs `run(config with rate)` per step; returns (steps in order, the best step or None)."""
    if target_ms <= 0:
        raise InferlineError("--p99-target-ms must be > 0")
    steps: List[dict] = []

    def step(rate: float) -> bool:
        report = run(replace(config, rate=rate))
        report["meets"] = meets(report, target_ms, max_error_share)
        steps.append(report)
        if on_step:
            on_step(report)
        return report["meets"]

    good: Optional[float] = None
    bad: Optional[float] = None
    rate = start_rps
    while len(steps) < max_steps and (good is None or bad is None):  # bracket: double up or halve down
        if step(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            rate /= 2
        if bad is not None and good is None and rate < start_rps / 64:
            break  # not even a trickle meets it
    while good is not None and bad is not None and len(steps) < max_steps and (bad - good) / good > resolution:
        middle = (good + bad) / 2
        if step(middle):
            good = middle
        else:
            bad = middle
    best = max((s for s in steps if s["meets"]), key=lambda s: s["offered_rps"], default=None)
    return steps, best
