"""Rows of ``inferline stats``: per model and version, what happened between two scrapes.

Counters become rates from their increase (a counter that went down was reset: a restart, a new
version; its increase is then its new value, as Prometheus's ``rate`` counts it). Latency
percentiles come from the increase of each histogram bucket, interpolated linearly inside the
bucket that holds the rank, the way Prometheus's ``histogram_quantile`` does, so a p99 here and
the recording rule's p99 over the same window agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .scrape import Scrape

LATENCY = "inferline_request_duration_seconds"


@dataclass
class Row:
    model: str
    version: str
    rate: Optional[float]
    """Requests accepted per second (None on the first scrape)."""
    p50: Optional[float]
    """Seconds, core time enqueue -> answer of requests answered OK in the interval (None: none)."""
    p99: Optional[float]
    error_ratio: Optional[float]
    """Errors per accepted request in the interval, capped at 1 (refusals count as errors)."""
    fallback_ratio: Optional[float]
    """The model's: routed requests answered along a fallback chain."""
    batch_fill: Optional[float]
    """Rows executed per batch slot in the interval."""
    in_flight: Optional[float]
    """Accepted and not yet answered (queued or running), now."""
    queued_rows: Optional[float]
    """Rows admitted by the core and not answered yet (queued or running), now: the queue depth."""
    canary: str
    """"" or the version's part in a rollout: "canary 25% agree 98.0% Δacc +0.010", "stable", "shadow ..."."""


def increase(prev: Optional[float], cur: Optional[float]) -> Optional[float]:
    """What a counter added between two readings; a reset (cur < prev) counts from zero."""
    if cur is None or prev is None:
        return None
    return cur if cur < prev else cur - prev


def ratio(num: Optional[float], den: Optional[float], cap: float = math.inf) -> Optional[float]:
    if num is None or not den:
        return None
    return min(num / den, cap)


def quantile(q: float, buckets: Sequence[Tuple[float, float]]) -> Optional[float]:
    """The q-quantile of cumulative ``(upper bound, count)`` buckets (the last bound +Inf), as
    Prometheus's histogram_quantile: linear inside the bucket holding rank q * total, the lowest
    bucket starting at 0, and the highest finite bound where the rank falls in +Inf. None when
    the buckets are empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    below_bound, below_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return below_bound
            if count == below_count:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (count - below_count)
        below_bound, below_count = bound, count
    return below_bound


def bucket_increase(prev: Optional[Scrape], cur: Scrape, name: str, **match: str) -> List[Tuple[float, float]]:
    """``(upper bound, increase)`` of every bucket of one histogram series between two scrapes
    (all of ``cur``'s counts when there is no ``prev``, or when any bucket went down: a reset)."""
    now = {float(labels["le"]): v for labels, v in cur.values(name + "_bucket", **match)}
    if prev is None:
        return sorted(now.items())
    before = {float(labels["le"]): v for labels, v in prev.values(name + "_bucket", **match)}
    if any(v < before.get(le, 0.0) for le, v in now.items()):
        return sorted(now.items())
    return sorted((le, v - before.get(le, 0.0)) for le, v in now.items())


def versions(scrape: Scrape) -> List[Tuple[str, str]]:
    """Every (model, version) the server reports, sorted by model then version number."""
    found = {(lb["model"], lb["version"]) for lb, _ in scrape.values("inferline_requests_total")}
    return sorted(found, key=lambda mv: (mv[0], int(mv[1]) if mv[1].isdigit() else math.inf, mv[1]))


def rows(prev: Optional[Scrape], cur: Scrape) -> List[Row]:
    """One row per model and version in ``cur``. Without ``prev`` (the first scrape) the interval
    quantities are None and only the gauges (in flight, canary) are filled."""
    dt = cur.at - prev.at if prev is not None else 0.0
    out = []
    for model, version in versions(cur):
        mv = {"model": model, "version": version}

        def inc(name, **match):
            return increase(prev.total(name, **match) if prev else None, cur.total(name, **match))

        requests = inc("inferline_requests_total", **mv)
        p50 = p99 = None
        if prev is not None:
            buckets = bucket_increase(prev, cur, LATENCY, **mv)
            p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        out.append(Row(
            model=model, version=version,
            rate=requests / dt if requests is not None and dt > 0 else None,
            p50=p50, p99=p99,
            error_ratio=ratio(inc("inferline_errors_total", **mv), requests, cap=1.0),
            fallback_ratio=ratio(inc("inferline_fallbacks_total", model=model),
                                 inc("inferline_routed_requests_total", model=model)),
            batch_fill=ratio(inc("inferline_batch_size_sum", **mv), inc("inferline_batch_slots_total", **mv)),
            in_flight=cur.value("inferline_requests_in_flight", **mv),
            queued_rows=cur.value("inferline_queue_rows", **mv),
            canary=canary_state(cur, model, version)))
    return out


def canary_state(scrape: Scrape, model: str, version: str) -> str:
    """The version's part in a rollout from the canary series (window counts, weight, accuracy delta)."""
    arms = scrape.values("inferline_canary_requests_total", model=model, version=version)
    weight = scrape.value("inferline_canary_weight_percent", model=model, version=version)
    arm = arms[0][0]["arm"] if arms else ("canary" if weight is not None else "")
    if not arm:
        return ""
    parts = [arm]
    if weight is not None:
        parts[0] += f" {weight:g}%"
    agree = ratio(scrape.total("inferline_canary_agreements_total", model=model, version=version),
                  scrape.total("inferline_canary_pairs_total", model=model, version=version))
    if agree is not None:
        parts.append(f"agree {100 * agree:.1f}%")
    delta = scrape.value("inferline_canary_accuracy_delta", model=model, version=version)
    if delta is not None:
        parts.append(f"Δacc {delta:+.3f}")
    return " ".join(parts)


def by_key(table: List[Row]) -> Dict[Tuple[str, str], Row]:
    return {(r.model, r.version): r for r in table}
