"""The records and checks of ``rollouts.RolloutStore``, and its feeds: the plain tables that a
rollout controller reads.

``Rollout``, ``RolloutEvent`` and ``Shadow`` are what the store returns (``rollouts`` exports them).
``Feeds`` is the store's base (``RolloutStore`` adds rollouts, shadows and their events): controller
leases, per-worker window counts, recorded predictions and labels, traffic per minute. Each method
is one transaction of the registry's ``Metadata`` (writes: one writer at a time).
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import InvalidArgument, ModelNotFound
from ._metadata import Metadata
from ._records import check_name, check_version, to_json

TRAFFIC_KEEP_MINUTES = 120
"""``add_traffic`` deletes a model's traffic rows this many minutes older than the one it adds."""
PREDICTIONS_PER_INSERT = 200
"""Rows per INSERT of ``add_predictions`` (1000 parameters: far below SQLite's limit of 32766)."""


@dataclass(frozen=True)
class Rollout:
    """One canary rollout of a model version, as stored."""

    id: int
    """Unique in the repository, increasing, never reused."""
    name: str
    """Model name."""
    version: int
    """The canary version."""
    base_version: Optional[int]
    """The live version when the rollout started (the stable version it is compared with)."""
    steps: Tuple[float, ...]
    """Canary weights in percent, strictly increasing, e.g. (5.0, 10.0, 25.0, 50.0, 100.0)."""
    interval_s: float
    """Time at each step before the controller judges it."""
    hold: bool
    """The controller holds the rollout where it is instead of advancing on its own."""
    skip_gate: bool
    """Started without the load-test gate."""
    status: str
    """canary (active), promoted, rolled_back, aborted or gate_failed."""
    step: int
    """Index into ``steps`` of the current weight."""
    step_started_at: float
    """Unix time the current step began."""
    started_at: float
    """Unix time the rollout began."""
    ended_at: Optional[float]
    """Unix time it ended; None while active."""
    reason: str
    """Why it ended ('' while active)."""

    @property
    def weight(self) -> float:
        """The canary's current weight in percent."""
        return self.steps[self.step]

    @property
    def active(self) -> bool:
        """True while the rollout runs (status canary)."""
        return self.status == "canary"

    @property
    def window(self) -> str:
        """The name of the current step's window counts: ``rollout:<id>:<step>``."""
        return f"rollout:{self.id}:{self.step}"

    @property
    def where(self) -> str:
        """``"rollout #id of model 'm' version N"``, the prefix of error messages about it."""
        return f"rollout #{self.id} of model {self.name!r} version {self.version}"

    def to_dict(self) -> dict:
        """Plain JSON-able data, with ``weight`` and ``active``."""
        return {**asdict(self), "steps": list(self.steps), "weight": self.weight, "active": self.active}


@dataclass(frozen=True)
class RolloutEvent:
    """One entry of a model's rollout history."""

    seq: int
    """Increasing across the repository."""
    name: str
    """Model name."""
    rollout_id: Optional[int]
    """The rollout it concerns; None for shadow events and notes about no rollout."""
    at: float
    """Unix time."""
    action: str
    """One of ``EVENT_ACTIONS``: start, gate_failed, advance, promoted, rolled_back, aborted, hold,
    takeover, shadow_start, shadow_stop."""
    reason: str
    """Why, in words ('' if none given)."""
    evidence: dict
    """What the decision rested on (the caller's JSON data)."""

    def to_dict(self) -> dict:
        """Plain JSON-able data."""
        return asdict(self)


@dataclass(frozen=True)
class Shadow:
    """A running shadow: a version that gets a copy of ``share`` percent of the model's traffic."""

    id: int
    """Unique in the repository, increasing, never reused."""
    name: str
    """Model name."""
    version: int
    """The shadow version."""
    share: float
    """Percent of the model's requests copied to it, in (0, 100]."""
    started_at: float
    """Unix time it started."""

    @property
    def window(self) -> str:
        """The name of its window counts: ``shadow:<id>``."""
        return f"shadow:{self.id}"

    def to_dict(self) -> dict:
        """Plain JSON-able data."""
        return asdict(self)


ROLLOUT = ("id, name, version, base_version, steps, interval_s, hold, skip_gate, status, step, "
           "step_started_at, started_at, ended_at, reason")
EVENT = "seq, name, rollout_id, at, action, reason, evidence"
SHADOW = "id, name, version, share, started_at"


def rollout_from_row(row: tuple) -> Rollout:
    """A Rollout from a ``SELECT {ROLLOUT}`` row."""
    (rid, name, version, base, steps, interval_s, hold, skip_gate, status, step, step_at, started, ended,
     reason) = row
    return Rollout(rid, name, version, base, tuple(json.loads(steps)), interval_s, bool(hold), bool(skip_gate),
                   status, step, step_at, started, ended, reason)


def event_from_row(row: tuple) -> RolloutEvent:
    """A RolloutEvent from a ``SELECT {EVENT}`` row."""
    return RolloutEvent(*row[:6], evidence=json.loads(row[6]))


def check_id(value: Any, field: str) -> int:
    """``value`` as an int if it is a positive integer, else InvalidArgument naming ``field``."""
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or v < 1:
        raise InvalidArgument(f"{field}: expected a positive integer id, got {value!r}")
    return v


def check_count(value: Any, field: str) -> int:
    """``value`` as an int if it is an integer >= 0, else InvalidArgument naming ``field``."""
    try:
        v = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        v = None
    if v is None or v < 0:
        raise InvalidArgument(f"{field}: expected an integer >= 0, got {value!r}")
    return v


def check_text(value: Any, field: str, empty: bool = False) -> str:
    """``value`` if it is a string (non-empty unless ``empty``), else InvalidArgument."""
    if not isinstance(value, str) or not (empty or value):
        raise InvalidArgument(f"{field}: expected a{'' if empty else ' non-empty'} string, got {value!r:.80}")
    return value


def check_real(value: Any, field: str, where: str = "", positive: bool = False) -> float:
    """``value`` as a float if it is a finite number (> 0 if ``positive``), else InvalidArgument
    naming ``field`` and ``where`` (e.g. "model 'm' version 2")."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and not value > 0):
        suffix = f" ({where})" if where else ""
        raise InvalidArgument(f"{field}: expected a finite number{' > 0' if positive else ''}, "
                              f"got {value!r}{suffix}")
    return float(value)


def check_percent(value: Any, field: str, where: str) -> float:
    """A weight or share: a finite percentage in (0, 100]."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not 0 < value <= 100:
        raise InvalidArgument(f"{field}: expected a percentage in (0, 100], got {value!r} ({where})")
    return float(value)


def check_steps(steps: Any, where: str) -> Tuple[float, ...]:
    """Canary weights in percent: at least one, each in (0, 100], strictly increasing."""
    try:
        items = tuple(steps) if not isinstance(steps, (str, bytes, Mapping)) else None
    except TypeError:
        items = None
    if not items:
        raise InvalidArgument(f"steps: expected canary weights in percent, e.g. (5, 25, 50, 100), "
                              f"got {steps!r} ({where})")
    weights = tuple(check_percent(w, f"steps[{i}]", where) for i, w in enumerate(items))
    if any(b <= a for a, b in zip(weights, weights[1:])):
        raise InvalidArgument(f"steps: weights must be strictly increasing, got {list(weights)} ({where})")
    return weights


def check_flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected True or False, got {value!r}")
    return value


def evidence_json(evidence: Any, field: str = "evidence") -> str:
    """Evidence (a mapping of JSON values, numbers finite; None: empty) as canonical JSON text."""
    return to_json({} if evidence is None else evidence, field)


def insert_unique(db, sql: str, params: tuple, refuse: Callable[[], None]) -> int:
    """Runs ``sql`` (an INSERT ... RETURNING id) and returns the id. When a unique index refuses the
    row (another process won a race that the caller's check missed), ``refuse()`` raises the
    caller's FailedPrecondition; the savepoint keeps the transaction usable for its query (a
    failed statement aborts a whole PostgreSQL transaction)."""
    db.execute("SAVEPOINT insert_unique")
    try:
        row_id = db.execute(sql, params).fetchall()[0][0]  # done: SQLite may commit
    except db.IntegrityError:
        db.execute("ROLLBACK TO SAVEPOINT insert_unique")
        refuse()
        raise
    db.execute("RELEASE SAVEPOINT insert_unique")
    return row_id


def require_model(meta: Metadata, db, name: str, field: str = "name") -> None:
    """ModelNotFound unless the repository has a model ``name``."""
    if not db.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
        raise ModelNotFound(f"{field}: model {name!r} not found in repository {meta.repository!r}")


def _rows(rows: Any, field: str) -> List[Any]:
    if isinstance(rows, (str, bytes, Mapping)):
        raise InvalidArgument(f"{field}: expected a sequence of tuples, got {type(rows).__name__}")
    try:
        return list(rows)
    except TypeError:
        raise InvalidArgument(f"{field}: expected a sequence of tuples, got {type(rows).__name__}") from None


def _unpack(row: Any, n: int, field: str, shape: str) -> tuple:
    if isinstance(row, (str, bytes, Mapping)) or not hasattr(row, "__len__") or len(row) != n:
        raise InvalidArgument(f"{field}: expected {shape}, got {row!r:.80}")
    return tuple(row)


class Feeds:
    """Leases, window counts, predictions and labels, traffic: see each method. Requires
    ``_meta`` (the registry's Metadata) and ``clock`` (unix seconds) on the instance."""

    _meta: Metadata
    clock: Callable[[], float]

    # ---------------------------------------------------------------------------- leases

    def acquire_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        """Takes or renews the lease ``key`` for ``holder`` until now + ``ttl_s``: True when it
        was free, expired or already held by ``holder``; False while another holder's lease runs."""
        check_text(key, "key")
        check_text(holder, "holder")
        ttl_s = check_real(ttl_s, "ttl_s", f"lease {key!r}", positive=True)
        with self._meta.tx(write=True) as db:
            now = self.clock()
            row = db.execute("SELECT holder, expires_at FROM leases WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            db.execute("INSERT INTO leases (key, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                       "DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
                       (key, holder, now + ttl_s))
            return True

    def release_lease(self, key: str, holder: str) -> None:
        """Gives the lease up if ``holder`` holds it (else changes nothing)."""
        check_text(key, "key")
        check_text(holder, "holder")
        with self._meta.tx(write=True) as db:
            db.execute("DELETE FROM leases WHERE key = ? AND holder = ?", (key, holder))

    def lease(self, key: str) -> Optional[Tuple[str, float]]:
        """(holder, expires_at) as stored (it may have expired: compare with the clock), or None."""
        check_text(key, "key")
        with self._meta.tx(write=False) as db:
            row = db.execute("SELECT holder, expires_at FROM leases WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    # --------------------------------------------------------------------- window counts

    def put_counts(self, window: str, worker: str, arms: Mapping[str, Mapping[str, Any]]) -> None:
        """Stores ``worker``'s cumulative counts of ``window``: one JSON mapping per arm, replacing
        what this worker stored for that arm before (never adding to it)."""
        check_text(window, "window")
        check_text(worker, "worker")
        if not isinstance(arms, Mapping):
            raise InvalidArgument(f"arms: expected a mapping arm -> counts, got {type(arms).__name__} "
                                  f"(window {window!r})")
        rows = [(window, worker, check_text(arm, "arms"), to_json(counts, f"arms[{arm!r}]"))
                for arm, counts in arms.items()]
        with self._meta.tx(write=True) as db:
            now = self.clock()
            db.executemany('INSERT INTO window_counts ("window", worker, arm, counts, updated_at) '
                           'VALUES (?, ?, ?, ?, ?) ON CONFLICT("window", worker, arm) DO UPDATE SET '
                           "counts = excluded.counts, updated_at = excluded.updated_at",
                           [r + (now,) for r in rows])

    def window_counts(self, window: str) -> Dict[str, List[dict]]:
        """arm -> the mappings that the workers stored for ``window`` (ordered by worker); the
        caller sums them."""
        check_text(window, "window")
        with self._meta.tx(write=False) as db:
            rows = db.execute('SELECT arm, counts FROM window_counts WHERE "window" = ? ORDER BY arm, worker',
                              (window,)).fetchall()
        out: Dict[str, List[dict]] = {}
        for arm, counts in rows:
            out.setdefault(arm, []).append(json.loads(counts))
        return out

    def drop_windows(self, prefix: str) -> int:
        """Deletes the counts of every window whose name starts with ``prefix`` (not empty; end it
        with ':' as in ``"rollout:7:"`` so that rollout 7 does not take rollout 70's); returns the
        number of rows deleted."""
        check_text(prefix, "prefix")
        with self._meta.tx(write=True) as db:
            return db.execute('DELETE FROM window_counts WHERE substr("window", 1, CAST(? AS INTEGER)) = ?',
                              (len(prefix), prefix)).rowcount

    # ------------------------------------------------------------- predictions and labels

    def add_predictions(self, name: str, rows: Iterable[Tuple[str, int, str, float]]) -> int:
        """Records predictions ``(request_id, version, predicted, at)`` of model ``name``; one per
        (request_id, version), the first recorded wins. Returns how many were new."""
        check_name(name, "name")
        values = []
        for i, row in enumerate(_rows(rows, "rows")):
            field = f"rows[{i}]"
            rid, version, predicted, at = _unpack(row, 4, field, "(request_id, version, predicted, at)")
            values.append((name, check_text(rid, f"{field}.request_id"), check_version(version, f"{field}.version"),
                           check_text(predicted, f"{field}.predicted", True),
                           check_real(at, f"{field}.at", f"model {name!r}")))
        new = 0
        with self._meta.tx(write=True) as db:  # one statement per chunk: its rowcount counts the new rows
            for start in range(0, len(values), PREDICTIONS_PER_INSERT):
                chunk = values[start:start + PREDICTIONS_PER_INSERT]
                new += db.execute("INSERT INTO predictions (name, request_id, version, predicted, at) VALUES "
                                  + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk)) + " ON CONFLICT DO NOTHING",
                                  [v for row in chunk for v in row]).rowcount
        return new

    def add_labels(self, name: str, items: Iterable[Tuple[str, str]]) -> Tuple[int, List[str]]:
        """Stores the true labels ``(request_id, label)`` of model ``name`` (a later label of a
        request replaces the earlier one; labels may come before their predictions). Returns (the
        number of request ids labelled, the ids without a recorded prediction of this model, in
        input order, each once). ModelNotFound for an unknown model."""
        check_name(name, "name")
        labels: Dict[str, str] = {}  # request id -> its last label, in input order of first mention
        for i, item in enumerate(_rows(items, "items")):
            rid, label = _unpack(item, 2, f"items[{i}]", "(request_id, label)")
            labels[check_text(rid, f"items[{i}].request_id")] = check_text(label, f"items[{i}].label", True)
        with self._meta.tx(write=True) as db:
            require_model(self._meta, db, name)
            now = self.clock()
            db.executemany("INSERT INTO labels (name, request_id, label, at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT(name, request_id) DO UPDATE SET label = excluded.label, at = excluded.at",
                           [(name, rid, label, now) for rid, label in labels.items()])
            unknown = [rid for rid in labels
                       if not db.execute("SELECT 1 FROM predictions WHERE name = ? AND request_id = ? LIMIT 1",
                                         (name, rid)).fetchone()]
        return len(labels), unknown

    def accuracy(self, name: str, since: float, versions: Iterable[int]) -> Dict[int, Tuple[int, int]]:
        """version -> (correct, labelled) over the predictions of ``name`` made at or after
        ``since`` that have a label (correct: the predicted text equals the label)."""
        check_name(name, "name")
        since = check_real(since, "since", f"model {name!r}")
        wanted = [check_version(v, "versions") for v in _rows(versions, "versions")]
        out = {v: (0, 0) for v in wanted}
        if not wanted:
            return out
        with self._meta.tx(write=False) as db:
            rows = db.execute(
                "SELECT p.version, SUM(CASE WHEN p.predicted = l.label THEN 1 ELSE 0 END), COUNT(*) "
                "FROM predictions p JOIN labels l "
                "ON l.name = p.name AND l.request_id = p.request_id WHERE p.name = ? AND p.at >= ? "
                f"AND p.version IN ({', '.join('?' * len(set(wanted)))}) GROUP BY p.version",
                (name, since, *set(wanted))).fetchall()
        out.update({v: (int(correct), int(n)) for v, correct, n in rows})
        return out

    def prune_predictions(self, older_than: float) -> int:
        """Deletes predictions and labels recorded before ``older_than`` (unix seconds; a
        prediction's own ``at``, a label's time of storing); returns the rows deleted."""
        older_than = check_real(older_than, "older_than")
        with self._meta.tx(write=True) as db:
            n = db.execute("DELETE FROM predictions WHERE at < ?", (older_than,)).rowcount
            return n + db.execute("DELETE FROM labels WHERE at < ?", (older_than,)).rowcount

    # --------------------------------------------------------------------------- traffic

    def add_traffic(self, name: str, minute: int, worker: str, count: int) -> None:
        """Adds ``count`` requests of ``name`` in ``minute`` (unix time // 60) served by
        ``worker``; deletes the model's rows more than ``TRAFFIC_KEEP_MINUTES`` older."""
        check_name(name, "name")
        minute = check_count(minute, "minute")
        check_text(worker, "worker")
        count = check_count(count, "count")
        with self._meta.tx(write=True) as db:
            db.execute("INSERT INTO traffic (name, minute, worker, count) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(name, minute, worker) DO UPDATE SET count = traffic.count + excluded.count",
                       (name, minute, worker, count))
            db.execute("DELETE FROM traffic WHERE name = ? AND minute < ?", (name, minute - TRAFFIC_KEEP_MINUTES))

    def peak_rate(self, name: str, since_minute: int) -> Optional[float]:
        """The busiest minute's requests per second (all workers summed) of ``name`` from
        ``since_minute`` on; None when no traffic is recorded there."""
        check_name(name, "name")
        since_minute = check_count(since_minute, "since_minute")
        with self._meta.tx(write=False) as db:
            row = db.execute("SELECT MAX(total) FROM (SELECT SUM(count) AS total FROM traffic WHERE name = ? "
                             "AND minute >= ? GROUP BY minute) AS per_minute", (name, since_minute)).fetchone()
        return None if row[0] is None else float(row[0]) / 60.0

