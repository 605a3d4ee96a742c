"""The canary controller: one per model at a time, acting on the registry's rollouts.

Every server worker (and every in-process ``Service``) runs a ``Controller`` on its registry
thread, ticked once per registry poll. For each active rollout a controller first takes the
model's lease in the registry (``rollout:NAME``, renewed every tick, expiring after ``lease_ttl_s``):
only the holder acts, so exactly one controller decides for a model even with ``--workers N`` or
several servers on one registry; when the holder dies its lease expires and another takes over
(recorded as a "takeover" event) and the rollout continues from its stored step.

The holder reads the current step's window (every worker's counts, summed), the labelled
accuracy of both arms, and the canary version's thresholds, asks ``analysis.analyze``, and acts:
rollback (canary version retired), advance (the next weight; a new window), or promote (the canary
becomes live; the previous live version stays in the live history for ``models rollback``). Each
act is a compare-and-set on the rollout's step, recorded with its evidence; a stale controller's
act is refused by the registry and ignored here.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, List, Optional

from ..config import CanaryConfig, SloConfig
from ..errors import FailedPrecondition, InferlineError, ModelNotFound
from .analysis import Decision, analyze, window_evidence

log = logging.getLogger("inferline.rollout")


def thresholds(record) -> tuple:
    """(CanaryConfig, SloConfig) of a version: its config's ``canary`` and ``slo`` sections."""
    cfg = record.config or {}
    return CanaryConfig(**(cfg.get("canary") or {})), SloConfig(**(cfg.get("slo") or {}))


def step_evidence(registry, rollout) -> dict:
    """The current step's evidence: every worker's counts of its window summed per arm (canary
    and the live version), the labelled accuracy since the rollout started, step and weight."""
    try:
        stable = registry.get(rollout.name).version
    except ModelNotFound:
        stable = None
    versions = [v for v in (rollout.version, stable) if v is not None]
    evidence = window_evidence(registry.rollouts.window_counts(rollout.window),
                               registry.rollouts.accuracy(rollout.name, rollout.started_at, versions),
                               rollout.version, stable)
    evidence.update(step=rollout.step, weight=rollout.weight, window=rollout.window)
    return evidence


class Controller:
    """Decides the rollouts whose lease it holds (see the module docstring)."""

    def __init__(self, holder: str, lease_ttl_s: float = 10.0, clock: Callable[[], float] = time.time):
        self.holder = holder
        """This controller's lease holder id (host, pid and a random part)."""
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self._holding: set = set()

    def tick(self, registry) -> List[tuple]:
        """One pass over the active rollouts; returns [(model, Decision)] of those it decided."""
        out = []
        for rollout in registry.rollouts.list_active():
            key = f"rollout:{rollout.name}"
            before = registry.rollouts.lease(key)
            if not registry.rollouts.acquire_lease(key, self.holder, self.lease_ttl_s):
                self._holding.discard(rollout.name)
                continue
            if rollout.name not in self._holding:
                self._holding.add(rollout.name)
                if before is not None and before[0] != self.holder:
                    registry.rollouts.note(rollout.id, rollout.name, "takeover",
                                           f"controller {self.holder} took over from {before[0]} (lease expired)",
                                           {"previous": before[0], "step": rollout.step, "weight": rollout.weight})
            try:
                decision = self.decide(registry, rollout)
            except InferlineError as e:  # e.g. the registry is busy: try again next tick
                log.warning("rollout of %s:%s: %s", rollout.name, rollout.version, e)
                continue
            if decision is not None:
                out.append((rollout.name, decision))
        return out

    def decide(self, registry, rollout) -> Optional[Decision]:
        """Judges one rollout now and acts on the decision; None when it only waits."""
        try:
            record = registry.get(rollout.name, rollout.version)
        except ModelNotFound:
            return self._finish(registry, rollout, Decision("rollback", f"canary version {rollout.version} "
                                                                       "no longer exists"), "aborted")
        if record.state == "failed":
            return self._finish(registry, rollout, Decision(
                "rollback", f"canary version {rollout.version} failed to load: {record.failure}"), "rolled_back")
        if record.state != "canary":
            return self._finish(registry, rollout, Decision(
                "rollback", f"canary version {rollout.version} was moved to {record.state} outside the rollout"),
                "aborted")
        canary_cfg, slo = thresholds(record)
        evidence = step_evidence(registry, rollout)
        interval_over = self.clock() - rollout.step_started_at >= rollout.interval_s
        decision = analyze(evidence, canary=canary_cfg, slo=slo, interval_over=interval_over and not rollout.hold,
                           last_step=rollout.step == len(rollout.steps) - 1)
        if decision.action == "rollback":
            return self._finish(registry, rollout, decision, "rolled_back")
        if decision.action == "promote":
            return self._finish(registry, rollout, decision, "promoted")
        if decision.action == "advance":
            try:
                registry.rollouts.advance(rollout.id, expected_step=rollout.step, evidence=decision.evidence,
                                          reason=decision.reason)
            except FailedPrecondition:  # another controller (or an operator) acted first
                return None
            log.info("canary %s:%s advanced to %g%%: %s", rollout.name, rollout.version,
                     rollout.steps[rollout.step + 1], decision.reason)
            return decision
        return None

    def _finish(self, registry, rollout, decision: Decision, outcome: str) -> Optional[Decision]:
        try:
            registry.rollouts.finish(rollout.id, outcome, evidence=decision.evidence, reason=decision.reason,
                                     expected_step=rollout.step)
        except FailedPrecondition:
            return None
        registry.rollouts.drop_windows(f"rollout:{rollout.id}:")
        registry.rollouts.release_lease(f"rollout:{rollout.name}", self.holder)
        self._holding.discard(rollout.name)
        log.warning("canary %s:%s %s: %s", rollout.name, rollout.version, outcome.replace("_", " "), decision.reason)
        return decision
