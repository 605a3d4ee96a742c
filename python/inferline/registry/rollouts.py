"""Storage of canary rollouts and shadows, and of the feeds their controller reads.

``Registry.rollouts`` is the registry's one ``RolloutStore``: it shares the registry's metadata (a
SQLite file or a PostgreSQL database) and its transactions (each method is one transaction; writers
take turns, across processes and machines). It stores and checks; the policy (when to advance,
what counts as worse) is the rollout room's.

A rollout moves a canary version of a model through increasing weights (``steps``, percent of its
traffic) while the live version (``base_version``) serves the rest. A model has at most one active
rollout (status canary): ``begin`` checks it, and a partial unique index makes sure of it when
processes race. ``advance`` and ``finish`` compare and set (the rollout must still be active, and at
the step the caller judged), so a stale controller never acts twice. A rollout ends promoted (the
canary becomes live exactly as ``Registry.promote`` makes it, so ``Registry.rollback`` returns to
the base version), rolled_back or aborted (the canary version is retired), or gate_failed (recorded
by ``record_gate_failure``, never active). A shadow gets a copy of a share of the model's traffic
whose answers are only compared; a model has at most one running shadow. Every change appends an
event to the model's history. The feeds (leases, window counts, predictions and labels, traffic)
are in ``_rollout_sql.Feeds``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, List, Mapping, Optional, Tuple

from ..errors import FailedPrecondition, InvalidArgument, ModelNotFound
from ._metadata import Metadata
from ._records import EVENT_ACTIONS, VersionRecord, check_name, check_version
from ._rollout_sql import (EVENT, ROLLOUT, SHADOW, Feeds, Rollout, RolloutEvent, Shadow, check_count, check_flag,
                           check_id, check_percent, check_real, check_steps, check_text, event_from_row,
                           evidence_json, insert_unique, require_model, rollout_from_row)

__all__ = ["NOTE_ACTIONS", "OUTCOMES", "Rollout", "RolloutEvent", "RolloutStore", "Shadow"]

OUTCOMES = ("promoted", "rolled_back", "aborted")
"""How ``finish`` may end a rollout."""
NOTE_ACTIONS = ("hold", "takeover")
"""The events that ``note`` records (the others are recorded by the change they describe)."""


class RolloutStore(Feeds):
    """Rollouts, shadows, their history and the controller's feeds, in the registry's metadata.

    Errors: InvalidArgument (a bad argument, naming its field), ModelNotFound / VersionNotFound,
    FailedPrecondition (a rule: another active rollout, a stale compare-and-set, a failed version),
    Unavailable (the metadata is busy or unreachable). Every message names the model and version.
    """

    def __init__(self, meta: Metadata, clock: Callable[[], float] = time.time):
        """Internal: use ``Registry.rollouts``."""
        self._meta = meta
        self.clock = clock
        """Unix seconds of every time stored here (tests may replace it)."""

    # ------------------------------------------------------------------------------- rollouts

    def begin(self, name: str, version: int, *, steps: Any, interval_s: float, hold: bool = False,
              skip_gate: bool = False, evidence: Optional[Mapping[str, Any]] = None) -> Rollout:
        """Starts a canary rollout of ``name:version`` at ``steps[0]`` percent against the live
        version: the version moves to state canary, a start event records ``evidence`` (with
        ``skip_gate: True`` when set). Refused (FailedPrecondition) when the model has no live
        version, the version is the live one or failed to load, or another rollout is active."""
        check_name(name, "name")
        version = check_version(version)
        where = f"model {name!r} version {version}"
        steps = check_steps(steps, where)
        interval_s = check_real(interval_s, "interval_s", where, positive=True)
        hold, skip_gate = check_flag(hold, "hold"), check_flag(skip_gate, "skip_gate")
        if evidence is not None and not isinstance(evidence, Mapping):
            raise InvalidArgument(f"evidence: expected a mapping, got {type(evidence).__name__} ({where})")
        ev = evidence_json({**(evidence or {}), **({"skip_gate": True} if skip_gate else {})})
        with self._meta.tx(write=True) as db:
            rec, live = self._candidate(db, name, version, "canary")
            self._refuse_active(db, name)
            self._meta.move(db, rec, "canary", "set_state")
            now = self.clock()
            rid = self._insert(db, (name, version, live.version, json.dumps(steps), interval_s, hold,
                                    skip_gate, "canary", 0, now, now, None, ""))
            self._append(db, name, rid, now, "start", "", ev)
            return self._get(db, rid)

    def record_gate_failure(self, name: str, version: int, *, steps: Any, interval_s: float,
                            evidence: Mapping[str, Any], reason: str) -> Rollout:
        """Records a rollout of ``name:version`` that the load-test gate refused: ended at once
        with status gate_failed and a gate_failed event; the version's state does not change."""
        check_name(name, "name")
        version = check_version(version)
        where = f"model {name!r} version {version}"
        steps = check_steps(steps, where)
        interval_s = check_real(interval_s, "interval_s", where, positive=True)
        ev, reason = evidence_json(evidence), check_text(reason, "reason", empty=True)
        with self._meta.tx(write=True) as db:
            self._meta.require(db, name, version)
            live = self._meta.live_row(db, name)
            now = self.clock()
            rid = self._insert(db, (name, version, live and live.version, json.dumps(steps), interval_s, False,
                                    False, "gate_failed", 0, now, now, now, reason))
            self._append(db, name, rid, now, "gate_failed", reason, ev)
            return self._get(db, rid)

    def active(self, name: str) -> Optional[Rollout]:
        """The model's active rollout, or None (also for a model the registry does not know)."""
        check_name(name, "name")
        with self._meta.tx(write=False) as db:
            return self._active(db, name)

    def get(self, rollout_id: int) -> Rollout:
        """The rollout ``rollout_id`` of any status; ModelNotFound if there is none."""
        rollout_id = check_id(rollout_id, "rollout_id")
        with self._meta.tx(write=False) as db:
            return self._get(db, rollout_id)

    def latest(self, name: str) -> Optional[Rollout]:
        """The model's newest rollout of any status, or None."""
        check_name(name, "name")
        with self._meta.tx(write=False) as db:
            row = db.execute(f"SELECT {ROLLOUT} FROM rollouts WHERE name = ? ORDER BY id DESC LIMIT 1",
                             (name,)).fetchone()
        return None if row is None else rollout_from_row(row)

    def list_active(self) -> List[Rollout]:
        """Every active rollout, ordered by model name."""
        with self._meta.tx(write=False) as db:
            rows = db.execute(f"SELECT {ROLLOUT} FROM rollouts WHERE status = 'canary' ORDER BY name").fetchall()
        return [rollout_from_row(r) for r in rows]

    def history(self, name: str, limit: int = 100) -> List[RolloutEvent]:
        """The model's last ``limit`` events (rollouts and shadows), oldest first."""
        check_name(name, "name")
        limit = check_id(limit, "limit")
        with self._meta.tx(write=False) as db:
            require_model(self._meta, db, name)
            rows = db.execute(f"SELECT {EVENT} FROM rollout_events WHERE name = ? ORDER BY seq DESC LIMIT ?",
                              (name, limit)).fetchall()
        return [event_from_row(r) for r in reversed(rows)]

    def advance(self, rollout_id: int, *, expected_step: int, evidence: Mapping[str, Any],
                reason: str) -> Rollout:
        """Moves an active rollout from ``expected_step`` to the next step (its window starts now)
        and records an advance event. FailedPrecondition if it is no longer active, not at
        ``expected_step`` (another controller acted) or at its last step (finish it instead)."""
        rollout_id = check_id(rollout_id, "rollout_id")
        expected_step = check_count(expected_step, "expected_step")
        ev, reason = evidence_json(evidence), check_text(reason, "reason", empty=True)
        with self._meta.tx(write=True) as db:
            r = self._get_at(db, rollout_id, expected_step, "advance")
            if expected_step + 1 >= len(r.steps):
                raise FailedPrecondition(f"{r.where} is at its last step {r.step} ({r.weight:g}%): "
                                         "finish it instead of advancing")
            now = self.clock()
            db.execute("UPDATE rollouts SET step = step + 1, step_started_at = ? WHERE id = ? AND "
                       "status = 'canary' AND step = ?", (now, rollout_id, expected_step))
            self._append(db, r.name, rollout_id, now, "advance", reason, ev)
            return self._get(db, rollout_id)

    def finish(self, rollout_id: int, outcome: str, *, evidence: Mapping[str, Any], reason: str,
               expected_step: Optional[int] = None) -> Rollout:
        """Ends an active rollout (at ``expected_step`` when given, else FailedPrecondition) with
        ``outcome``: promoted (the canary becomes live as with ``Registry.promote``; the base
        version is retired and stays in the live history for ``Registry.rollback``), rolled_back or
        aborted (the canary version is retired if it is still in state canary). One transaction."""
        rollout_id = check_id(rollout_id, "rollout_id")
        if outcome not in OUTCOMES:
            raise InvalidArgument(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r} "
                                  f"(rollout #{rollout_id})")
        expected_step = None if expected_step is None else check_count(expected_step, "expected_step")
        ev, reason = evidence_json(evidence), check_text(reason, "reason", empty=True)
        with self._meta.tx(write=True) as db:
            r = self._get_at(db, rollout_id, expected_step, f"be {outcome.replace('_', ' ')}")
            rec = self._meta.row(db, r.name, r.version)
            if outcome == "promoted":
                if rec is None:
                    raise FailedPrecondition(f"{r.where}: the version was deleted; it cannot be promoted")
                if not rec.is_live:
                    self._meta.set_live(db, rec, "promote", "promote")
            elif rec is not None and rec.state == "canary":
                self._meta.move(db, rec, "retired", "set_state")
            now = self.clock()
            db.execute("UPDATE rollouts SET status = ?, ended_at = ?, reason = ? WHERE id = ?",
                       (outcome, now, reason, rollout_id))
            self._append(db, r.name, rollout_id, now, outcome, reason, ev)
            return self._get(db, rollout_id)

    def note(self, rollout_id: Optional[int], name: str, action: str, reason: str,
             evidence: Optional[Mapping[str, Any]] = None) -> RolloutEvent:
        """Appends a ``hold`` or ``takeover`` event to the model's history (about ``rollout_id``,
        a rollout of this model, or about none) and returns it."""
        check_name(name, "name")
        rollout_id = None if rollout_id is None else check_id(rollout_id, "rollout_id")
        if action not in NOTE_ACTIONS:
            raise InvalidArgument(f"action: note records {' or '.join(NOTE_ACTIONS)}, not {action!r} "
                                  f"(model {name!r})")
        ev, reason = evidence_json(evidence), check_text(reason, "reason", empty=True)
        with self._meta.tx(write=True) as db:
            require_model(self._meta, db, name)
            if rollout_id is not None and self._get(db, rollout_id).name != name:
                raise InvalidArgument(f"rollout_id: rollout #{rollout_id} is not a rollout of model {name!r}")
            seq = self._append(db, name, rollout_id, self.clock(), action, reason, ev)
            return event_from_row(db.execute(f"SELECT {EVENT} FROM rollout_events WHERE seq = ?", (seq,)).fetchone())

    # -------------------------------------------------------------------------------- shadows

    def start_shadow(self, name: str, version: int, share: float) -> Shadow:
        """Starts copying ``share`` percent of the model's traffic to ``name:version`` and records
        a shadow_start event. Refused (FailedPrecondition) when the model has no live version, the
        version is live or failed to load, or a shadow already runs on the model."""
        check_name(name, "name")
        version = check_version(version)
        share = check_percent(share, "share", f"model {name!r} version {version}")
        with self._meta.tx(write=True) as db:
            self._candidate(db, name, version, "shadow")
            self._refuse_shadow(db, name)
            now = self.clock()
            sid = insert_unique(db, "INSERT INTO shadows (name, version, share, started_at) VALUES (?, ?, ?, ?) "
                                "RETURNING id", (name, version, share, now), lambda: self._refuse_shadow(db, name))
            ev = evidence_json({"shadow_id": sid, "version": version, "share": share})
            self._append(db, name, None, now, "shadow_start", "", ev)
            return self._shadow(db, name)

    def stop_shadow(self, name: str) -> Shadow:
        """Stops the model's running shadow, records a shadow_stop event and returns it as it ran;
        FailedPrecondition if none runs."""
        check_name(name, "name")
        with self._meta.tx(write=True) as db:
            s = self._shadow(db, name)
            if s is None:
                require_model(self._meta, db, name)
                raise FailedPrecondition(f"model {name!r} has no running shadow to stop")
            now = self.clock()
            db.execute("UPDATE shadows SET stopped_at = ? WHERE id = ?", (now, s.id))
            ev = evidence_json({"shadow_id": s.id, "version": s.version, "share": s.share})
            self._append(db, name, None, now, "shadow_stop", "", ev)
            return s

    def shadow(self, name: str) -> Optional[Shadow]:
        """The model's running shadow, or None."""
        check_name(name, "name")
        with self._meta.tx(write=False) as db:
            return self._shadow(db, name)

    def shadows(self) -> List[Shadow]:
        """Every running shadow, ordered by model name."""
        with self._meta.tx(write=False) as db:
            rows = db.execute(f"SELECT {SHADOW} FROM shadows WHERE stopped_at IS NULL ORDER BY name").fetchall()
        return [Shadow(*r) for r in rows]

    # -------------------------------------------------------------------------------- helpers

    def _candidate(self, db, name: str, version: int, what: str) -> Tuple[VersionRecord, VersionRecord]:
        """(the version, the live version) if ``version`` may be a canary or shadow."""
        rec = self._meta.require(db, name, version)
        live = self._meta.live_row(db, name)
        if live is None:
            raise FailedPrecondition(f"model {name!r} has no live version: a {what} needs a stable version "
                                     "to compare with; promote one first")
        if rec.is_live:
            raise FailedPrecondition(f"{rec.where} is the live version: a {what} must be another version")
        if rec.state == "failed":
            raise FailedPrecondition(f"{rec.where} failed to load ({rec.failure}): it cannot be a {what}")
        return rec, live

    def _refuse_active(self, db, name: str) -> None:
        r = self._active(db, name)
        if r is not None:
            raise FailedPrecondition(f"model {name!r} already has an active rollout #{r.id} of version "
                                     f"{r.version} at {r.weight:g}%: promote or abort it first")

    def _refuse_shadow(self, db, name: str) -> None:
        s = self._shadow(db, name)
        if s is not None:
            raise FailedPrecondition(f"model {name!r} already has shadow #{s.id} of version {s.version} "
                                     f"at {s.share:g}%: stop it first")

    def _insert(self, db, values: tuple) -> int:
        return insert_unique(db, f"INSERT INTO rollouts ({ROLLOUT.partition(', ')[2]}) VALUES "
                             f"({', '.join('?' * len(values))}) RETURNING id", values,
                             lambda: self._refuse_active(db, values[0]))

    def _append(self, db, name: str, rollout_id: Optional[int], at: float, action: str, reason: str,
                evidence: str) -> int:
        assert action in EVENT_ACTIONS, action
        return db.execute("INSERT INTO rollout_events (name, rollout_id, at, action, reason, evidence) "
                          "VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
                          (name, rollout_id, at, action, reason, evidence)).fetchall()[0][0]

    def _active(self, db, name: str) -> Optional[Rollout]:
        row = db.execute(f"SELECT {ROLLOUT} FROM rollouts WHERE name = ? AND status = 'canary'",
                         (name,)).fetchone()
        return None if row is None else rollout_from_row(row)

    def _get(self, db, rollout_id: int) -> Rollout:
        row = db.execute(f"SELECT {ROLLOUT} FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise ModelNotFound(f"rollout_id: rollout #{rollout_id} not found in repository "
                                f"{self._meta.repository!r}")
        return rollout_from_row(row)

    def _get_at(self, db, rollout_id: int, expected_step: Optional[int], verb: str) -> Rollout:
        """The rollout if it is active (and at ``expected_step`` when given), else FailedPrecondition."""
        r = self._get(db, rollout_id)
        if not r.active:
            raise FailedPrecondition(f"{r.where} is {r.status.replace('_', ' ')}, not active: it cannot {verb}")
        if expected_step is not None and r.step != expected_step:
            raise FailedPrecondition(f"{r.where} is at step {r.step} ({r.weight:g}%), not expected_step "
                                     f"{expected_step}: another controller moved it; read it again")
        return r

    def _shadow(self, db, name: str) -> Optional[Shadow]:
        row = db.execute(f"SELECT {SHADOW} FROM shadows WHERE name = ? AND stopped_at IS NULL",
                         (name,)).fetchone()
        return None if row is None else Shadow(*row)
