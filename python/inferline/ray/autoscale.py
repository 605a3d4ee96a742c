"""Sizing a pool from inferline's own in-flight count (a Serve custom autoscaling policy).

Requests reach the replicas without passing through Serve, so Serve's ongoing-request count stays
at zero; the signals are what each replica returns from record_autoscaling_stats (replica.py):
"inflight" (requests in the child's core and admission lobby: queue depth included) and "over_slo"
(its p99 since the last heartbeat above the version's slo.p99_ms). The policy wants enough replicas
for each to carry `target_inflight`, and one more than now while a replica misses its SLO. Serve
wraps a custom policy with its own delay logic and bounds: a rise must persist for upscale_delay_s
and a fall for downscale_delay_s before the count moves, and the result is clipped to min/max
replicas, so this function only does the arithmetic.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

METRIC = "inflight"
SLO_METRIC = "over_slo"
DEFAULT_TARGET_INFLIGHT = 4.0


def desired_replicas(total_inflight: float, target_inflight: float, lo: int, hi: int) -> int:
    """ceil(total / target), within [lo, hi]; pure, so that the tests need no cluster."""
    want = math.ceil(total_inflight / target_inflight - 1e-9) if total_inflight > 0 else 0
    return max(lo, min(hi, want))


def above_slo(want: int, over_slo, current: int, hi: int) -> int:
    """At least one replica more than now (within ``hi``) while any replica's p99 was mostly above its
    SLO over the look-back window (``over_slo``: each replica's mean of 0/1 readings)."""
    if any(v >= 0.5 for v in over_slo):
        return max(want, min(hi, current + 1))
    return want


def inflight_policy(ctx) -> Tuple[int, Dict]:
    """Serve calls this every control loop tick with an AutoscalingContext."""
    metrics = ctx.aggregated_metrics or {}
    per_replica = metrics.get(METRIC, {})
    state = dict(ctx.policy_state or {})
    if not per_replica:  # no report yet (replicas starting): keep what Serve is aiming for
        return ctx.target_num_replicas, state
    total = float(sum(per_replica.values()))
    target = _target(ctx)
    want = desired_replicas(total, target, ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas)
    want = above_slo(want, metrics.get(SLO_METRIC, {}).values(), ctx.current_num_replicas,
                     ctx.capacity_adjusted_max_replicas)
    state["inferline_total_inflight"] = total
    return want, state


def _target(ctx) -> float:
    """target_inflight travels in Serve's target_ongoing_requests field: a plain-function policy
    gets no arguments of its own, and that field is otherwise unused (no request passes Serve)."""
    target = getattr(ctx.config, "target_ongoing_requests", None) if ctx.config is not None else None
    return float(target) if target else DEFAULT_TARGET_INFLIGHT
