"""One step of a canary judged: canary vs stable over the same window -> a decision with evidence.

Pure functions over plain data (the workers' counts summed, the labelled accuracy per version),
no I/O: the controller reads the registry, calls ``analyze``, and records what it returns. The
rules, with the thresholds of the canary version's ``canary`` and ``slo`` config sections:

1. errors: canary error rate - stable error rate > ``max_error_rate_increase``, or the canary's
   error rate above ``slo.max_error_rate`` while stable's is not (once the canary has
   ``min_requests`` requests; a fallback's answer counts as the arm's failure);
2. latency: canary p99 > ``slo.p99_ms``, or > ``max_p99_ratio`` x stable p99 + ``p99_slack_ms``
   (same sample rule);
3. agreement: the share of mirrored pairs (the same request through both versions) whose
   predictions agree < ``min_agreement`` (once ``min_pairs`` pairs);
4. accuracy: ``canary_accuracy_delta`` (canary accuracy - stable accuracy on labelled requests)
   < -``max_accuracy_drop`` (once both arms have ``min_labels`` labels).

Any breach rolls back. Without a breach, a step whose interval has passed advances (promotes after
the last step) when the canary had ``min_requests`` requests; otherwise it waits for traffic.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from ..config import CanaryConfig, SloConfig
from .recorder import merge, percentile_ms


@dataclass(frozen=True)
class Decision:
    """What the controller does now, why, and the numbers it saw."""

    action: str
    """"rollback", "advance", "promote" or "wait"."""
    reason: str
    """In words, with the numbers that decided it."""
    evidence: dict = field(default_factory=dict)
    """Per arm: requests, errors, error_rate, p99_ms, pairs, agreement, max_abs_diff, labelled,
    accuracy; canary_accuracy_delta; the thresholds used."""


def window_evidence(counts: Mapping[str, List[dict]], accuracy: Mapping[int, Tuple[int, int]],
                    canary_version: int, stable_version: Optional[int]) -> dict:
    """The evidence of one window: the workers' counts summed per arm, with rates and p99."""
    out: dict = {}
    for arm, version in (("canary", canary_version), ("stable", stable_version)):
        m = merge(counts.get(arm, []))
        correct, labelled = accuracy.get(version, (0, 0)) if version is not None else (0, 0)
        out[arm] = {
            "version": version, "requests": m["requests"], "errors": m["errors"], "fallbacks": m["fallbacks"],
            "error_rate": m["errors"] / m["requests"] if m["requests"] else None,
            "p50_ms": _finite(percentile_ms(m["latency"], 0.50)), "p99_ms": _finite(percentile_ms(m["latency"], 0.99)),
            "pairs": m["pairs"], "agreement": m["agree"] / m["pairs"] if m["pairs"] else None,
            "max_abs_diff": _finite(m["max_abs_diff"]), "mirror_dropped": m["dropped"],
            "mirror_errors": m["copy_errors"],
            "labelled": labelled, "accuracy": correct / labelled if labelled else None,
        }
    c, s = out["canary"]["accuracy"], out["stable"]["accuracy"]
    out["canary_accuracy_delta"] = None if c is None or s is None else c - s
    return out


def analyze(evidence: dict, *, canary: CanaryConfig, slo: SloConfig, interval_over: bool,
            last_step: bool) -> Decision:
    """The decision for one step's window (``window_evidence``); see the module docstring."""
    c, s = evidence["canary"], evidence["stable"]
    evidence = dict(evidence, thresholds={"canary": _plain(canary), "slo": _plain(slo)})
    breach = _breach(c, s, evidence["canary_accuracy_delta"], canary, slo)
    if breach:
        return Decision("rollback", breach, evidence)
    if not interval_over:
        return Decision("wait", "the step's interval has not passed", evidence)
    if c["requests"] < canary.min_requests:
        return Decision("wait", f"the canary had {c['requests']} requests in this step; it needs "
                                f"{canary.min_requests} before it may advance", evidence)
    summary = (f"canary error rate {_pct(c['error_rate'])} vs stable {_pct(s['error_rate'])}, p99 "
               f"{_ms(c['p99_ms'])} vs {_ms(s['p99_ms'])}, agreement {_pct(c['agreement'])} over "
               f"{c['pairs']} pairs")
    if last_step:
        return Decision("promote", f"every step clean: {summary}", evidence)
    return Decision("advance", f"step clean: {summary}", evidence)


def _breach(c: dict, s: dict, delta: Optional[float], canary: CanaryConfig, slo: SloConfig) -> str:
    if c["requests"] >= canary.min_requests:
        c_rate, s_rate = c["error_rate"], s["error_rate"] or 0.0
        if c_rate - s_rate > canary.max_error_rate_increase:
            return (f"error rate: canary {_pct(c_rate)} ({c['errors']}/{c['requests']}) vs stable "
                    f"{_pct(s_rate)} ({s['errors']}/{s['requests']}): more than "
                    f"{_pct(canary.max_error_rate_increase)} above stable")
        if c_rate > slo.max_error_rate >= s_rate:
            return (f"error rate: canary {_pct(c_rate)} ({c['errors']}/{c['requests']}) above the SLO's "
                    f"{_pct(slo.max_error_rate)} while stable's is {_pct(s_rate)}")
        cp, sp = c["p99_ms"], s["p99_ms"]
        if cp is not None and cp > slo.p99_ms:
            return f"latency: canary p99 {_ms(cp)} above the SLO's {_ms(slo.p99_ms)}"
        if cp is not None and sp is not None and s["requests"] >= canary.min_requests and \
                cp > canary.max_p99_ratio * sp + canary.p99_slack_ms:
            return (f"latency: canary p99 {_ms(cp)} above {canary.max_p99_ratio:g} x stable p99 {_ms(sp)} "
                    f"+ {_ms(canary.p99_slack_ms)}")
    if c["pairs"] >= canary.min_pairs and c["agreement"] < canary.min_agreement:
        return (f"prediction agreement: {_pct(c['agreement'])} of {c['pairs']} mirrored pairs agree with stable "
                f"(minimum {_pct(canary.min_agreement)}; max abs difference {c['max_abs_diff']:.4g})")
    if delta is not None and min(c["labelled"], s["labelled"]) >= canary.min_labels and \
            delta < -canary.max_accuracy_drop:
        return (f"accuracy: canary {_pct(c['accuracy'])} on {c['labelled']} labels vs stable "
                f"{_pct(s['accuracy'])} on {s['labelled']} (canary_accuracy_delta {delta:+.4f}, "
                f"allowed -{canary.max_accuracy_drop:g})")
    return ""


def _finite(x: Optional[float]) -> Optional[float]:
    """Evidence is stored as JSON: an infinite value (latency beyond the histogram, a difference
    that overflowed) becomes the largest finite float, which still breaches every threshold."""
    return None if x is None else (x if math.isfinite(x) else sys.float_info.max)


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}%"


def _ms(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def _plain(cfg) -> Dict[str, object]:
    return dataclasses.asdict(cfg)
