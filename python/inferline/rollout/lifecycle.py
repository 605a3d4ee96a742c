"""Starting, judging by hand, and ending rollouts: what ``inferline canary|shadow`` and the REST
admin API call (one implementation for both).

``start_canary`` checks the request, runs the load-test gate (``gate.run_gate``: the candidate
alone in an isolated engine of this process at 2x the model's peak rate) unless ``skip_gate``, and
records the rollout: the candidate becomes ``canary`` at the first step's weight, and every server
on the registry routes that share of the keys to it at its next poll. A failed gate records the
attempt (status ``gate_failed``, with the measured numbers) and raises FailedPrecondition saying
why. ``promote_canary`` / ``abort_canary`` end it by hand; ``canary_status`` is the rollout, its
current window and its history of decisions.
"""

from __future__ import annotations

import math
import time
from typing import Iterable, Optional

from ..errors import FailedPrecondition, InvalidArgument, ModelNotFound
from ..models.loader import LoadFailed
from ..registry.store import ArtifactMissing, TamperedArtifact, check_name, check_version
from .controller import step_evidence, thresholds
from .gate import gate_rate, run_gate
from .recorder import merge, percentile_ms

DEFAULT_STEPS = (5.0, 10.0, 25.0, 50.0, 100.0)
"""Canary weights (percent) when none are given."""
DEFAULT_INTERVAL_S = 60.0
"""Seconds per step when none are given."""


def parse_steps(text) -> tuple:
    """"5,10,25" (or a list of numbers) -> (5.0, 10.0, 25.0), each in (0, 100], strictly increasing."""
    try:
        items = text.split(",") if isinstance(text, str) else [text] if isinstance(text, (int, float)) else list(text)
        if any(isinstance(x, bool) for x in items):
            raise TypeError
        steps = tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise InvalidArgument(f"steps: expected comma-separated percentages like 5,10,25,50,100, "
                              f"got {text!r}") from None
    if not steps:
        raise InvalidArgument("steps: at least one weight is needed")
    for w in steps:
        if not math.isfinite(w) or not 0.0 < w <= 100.0:
            raise InvalidArgument(f"steps: weight {w:g} is outside 0-100 (a canary weight is a percentage "
                                  "of the keys, above 0 and at most 100)")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise InvalidArgument(f"steps: weights must increase strictly, got {', '.join(f'{w:g}' for w in steps)}")
    return steps


def parse_interval(text) -> float:
    """"60s", "2m", "500ms" or a number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().lower()
        scale = 1.0
        for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
            if s.endswith(suffix):
                s, scale = s[:-len(suffix)], factor
                break
        try:
            value = float(s) * scale
        except ValueError:
            raise InvalidArgument(f"interval: expected a duration like 60s, 2m or 500ms, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"interval: must be above 0 seconds, got {text!r}")
    return value


def start_canary(registry, name: str, version: int, *, steps: Iterable[float] = DEFAULT_STEPS,
                 interval_s: float = DEFAULT_INTERVAL_S, hold: bool = False, skip_gate: bool = False,
                 gate_seconds: Optional[float] = None):
    """Starts a canary of ``name:version`` (see the module docstring); returns the Rollout."""
    check_name(name, "name")
    version = check_version(version)
    steps = parse_steps(steps)
    interval_s = parse_interval(interval_s)
    record = _startable(registry, name, version)
    if skip_gate:
        return registry.rollouts.begin(name, version, steps=steps, interval_s=interval_s, hold=hold,
                                       skip_gate=True, evidence={"gate": "skipped by request (--skip-gate)"})
    _, slo = thresholds(record)
    observed = registry.rollouts.peak_rate(name, int(time.time() // 60) - 60)
    rate, why = gate_rate(slo, observed)
    try:
        result = run_gate(registry, record, rate_rps=rate, slo=slo, seconds=gate_seconds)
    except (LoadFailed, ArtifactMissing, TamperedArtifact) as e:  # it cannot serve: recorded as failed
        registry.record_load(name, version, failure=str(e))
        registry.rollouts.record_gate_failure(name, version, steps=steps, interval_s=interval_s,
                                              evidence={"gate": {"load_failure": str(e)}},
                                              reason=f"failed to load: {e}")
        raise FailedPrecondition(f"model {name!r} version {version} failed to load for the load-test gate: {e}; "
                                 "the canary was not started") from None
    evidence = {"gate": dict(result.to_dict(), rate_basis=why)}
    if not result.passed:
        registry.rollouts.record_gate_failure(name, version, steps=steps, interval_s=interval_s,
                                              evidence=evidence, reason=result.reason)
        raise FailedPrecondition(f"model {name!r} version {version}: the load-test gate failed at {rate:g} "
                                 f"requests/s ({why}): {result.reason}; the canary was not started "
                                 f"(fix the version, or pass --skip-gate)")
    return registry.rollouts.begin(name, version, steps=steps, interval_s=interval_s, hold=hold,
                                   skip_gate=False, evidence=evidence)


def _startable(registry, name: str, version: int):
    """The candidate's record, after the checks that need no lock (``begin`` repeats them in its
    transaction): a live version to compare with, a candidate that is not live, not failed, and no
    rollout already running."""
    record = registry.get(name, version)
    try:
        registry.get(name)  # the live version
    except ModelNotFound:
        raise FailedPrecondition(f"model {name!r} has no live version: a canary needs a stable version to "
                                 "compare with; promote one first") from None
    if record.is_live:
        raise FailedPrecondition(f"model {name!r} version {version} is already live")
    if record.state == "failed":
        raise FailedPrecondition(f"model {name!r} version {version} failed to load ({record.failure}); "
                                 "it cannot be a canary")
    active = registry.rollouts.active(name)
    if active is not None:
        raise FailedPrecondition(f"model {name!r} already has a canary: version {active.version} at "
                                 f"{active.weight:g}% (rollout #{active.id}); promote or abort it first")
    return record


def promote_canary(registry, name: str, reason: str = "promoted by the operator"):
    """Makes the active canary live now (the previous live version stays in the live history)."""
    rollout = _active(registry, name)
    return registry.rollouts.finish(rollout.id, "promoted", evidence=step_evidence(registry, rollout), reason=reason)


def abort_canary(registry, name: str, reason: str = "aborted by the operator"):
    """Ends the active canary: its version is retired, all keys go back to the stable version."""
    rollout = _active(registry, name)
    return registry.rollouts.finish(rollout.id, "aborted", evidence=step_evidence(registry, rollout), reason=reason)


def canary_status(registry, name: str, history: int = 50) -> dict:
    """The model's current (or latest) rollout, its current window's evidence, its shadow and its
    recent history of decisions, as plain data."""
    check_name(name, "name")
    registry.list(name)  # ModelNotFound for an unknown model
    rollout = registry.rollouts.active(name) or registry.rollouts.latest(name)
    out = {"model": name, "rollout": rollout.to_dict() if rollout else None, "window": None,
           "shadow": None, "history": [e.to_dict() for e in registry.rollouts.history(name, history)]}
    if rollout is not None and rollout.active:
        out["window"] = step_evidence(registry, rollout)
    shadow = registry.rollouts.shadow(name)
    if shadow is not None:
        out["shadow"] = dict(shadow.to_dict(), window=_shadow_window(registry, shadow))
    return out


def start_shadow(registry, name: str, version: int, share: float = 100.0):
    """Copies ``share`` percent of the stable version's requests to ``name:version`` (answers never
    returned, compared with the returned ones)."""
    check_name(name, "name")
    version = check_version(version)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
            or not 0.0 < float(share) <= 100.0:
        raise InvalidArgument(f"share: expected a percentage above 0 and at most 100, got {share!r}")
    return registry.rollouts.start_shadow(name, version, float(share))


def stop_shadow(registry, name: str):
    """Stops the model's shadow; returns it."""
    check_name(name, "name")
    return registry.rollouts.stop_shadow(name)


def _active(registry, name: str):
    check_name(name, "name")
    rollout = registry.rollouts.active(name)
    if rollout is None:
        registry.list(name)  # ModelNotFound for an unknown model
        raise FailedPrecondition(f"model {name!r} has no canary running")
    return rollout


def _shadow_window(registry, shadow) -> dict:
    m = merge(registry.rollouts.window_counts(shadow.window).get("shadow", []))
    return {"pairs": m["pairs"], "agreement": m["agree"] / m["pairs"] if m["pairs"] else None,
            "max_abs_diff": m["max_abs_diff"], "dropped": m["dropped"], "errors": m["copy_errors"],
            "p99_ms": percentile_ms(m["latency"], 0.99)}
