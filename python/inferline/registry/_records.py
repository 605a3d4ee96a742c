"""Registry records and their rules: names, refs, version records, the metadata schema.

Plain data and checks with no I/O; ``store.Registry`` applies them inside its transactions.
"""

from __future__ import annotations

import datetime
import json
import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Tuple

from ..errors import FailedPrecondition, InvalidArgument, ModelNotFound
from ._states import STATES

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of the metadata file (PostgreSQL: the ``schema_version`` row of ``meta``);
older schemas are migrated (``MIGRATIONS``), newer ones refused. 1: versions and live history;
2: rollouts, shadows and their feeds."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_RE = re.compile(r"[1-9][0-9]{0,17}")


class VersionNotFound(ModelNotFound):
    """The model exists but not the requested version (or it has no live version)."""


def check_name(name: Any, field: str = "name") -> str:
    """Returns ``name`` if it is a valid model name, else raises InvalidArgument naming ``field``.

    Valid: 1-128 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, and no
    ``..`` (names become path components in the repository).
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"{field}: invalid model name {name!r}: use 1-128 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..' or path separators")
    return name


def check_version(version: Any, field: str = "version") -> int:
    """Returns ``version`` as an int if it is a positive integer, else raises InvalidArgument."""
    try:
        v = None if isinstance(version, bool) else operator.index(version)
    except TypeError:
        v = None
    if v is None or v < 1:
        raise InvalidArgument(f"{field}: version must be a positive integer, got {version!r}")
    return v


def parse_ref(ref: Any, field: str = "ref") -> Tuple[str, Optional[int]]:
    """Splits ``"name[:version]"`` into (name, version or None), checking both."""
    if not isinstance(ref, str):
        raise InvalidArgument(f"{field}: expected 'NAME[:VERSION]', got {ref!r}")
    name, sep, ver = ref.partition(":")
    check_name(name, field)
    if not sep:
        return name, None
    if not _VERSION_RE.fullmatch(ver):
        raise InvalidArgument(f"{field}: version in {ref!r} must be a positive integer")
    return name, int(ver)


def check_fallback_ref(name: str, version: Optional[int], ref: Any,
                       field: str = "fallback_id") -> Tuple[str, Optional[int], str]:
    """The fallback rule's part that needs no storage; returns (target name, target version or
    None, normalised text).

    The rule (``Registry.check_fallback`` adds the rest: the target exists and did not fail): a
    fallback is ``"name:version"`` (pinned) or ``"name"`` (that model's live version when used),
    of any model, but never the version itself. So a fallback within the same model must pin a
    version (its live version may be the very version that falls back), and it may be an older
    version of the model (a rollback target is the most natural fallback). ``version`` is None for
    a version not numbered yet (a package being pushed: any existing version is older than it).
    """
    target_name, target_version = parse_ref(ref, field)
    text = target_name if target_version is None else f"{target_name}:{target_version}"
    if target_name == name and target_version is None:
        raise InvalidArgument(f"{field}: {text!r} refers to the model itself (its live version); "
                              f"a fallback within the same model must name a version")
    if target_name == name and target_version == version:
        raise InvalidArgument(f"{field}: {text!r} refers to model {name!r} version {version} itself")
    return target_name, target_version, text


class FallbackNode(NamedTuple):
    """What a fallback walk needs of a version (a VersionRecord has these fields too)."""

    name: str
    version: Optional[int]
    """None only for a version being pushed that has no number yet."""
    fallback_id: Optional[str]


Resolve = Callable[[str, Optional[int]], Optional[Any]]
"""``resolve(name, version)``: the version's record (any object with name, version and
fallback_id), the model's live version for ``version`` None, or None if there is none."""


def fallback_path(start: Any, resolve: Resolve) -> Tuple[List[Tuple[str, Optional[int]]], bool]:
    """Follows fallback links from ``start`` (a record): returns (path, closed), where path lists
    the (name, version) reached, ``start``'s first, and closed says that its last entry was already
    on it (a cycle; the walk stops there). A ``"name"`` link is that model's live version as
    ``resolve`` says now. The walk also stops at a version without a fallback, and at a link that
    resolves to nothing (a model without a live version, a version deleted meanwhile)."""
    node = (start.name, start.version)
    path, seen, ref = [node], {node}, start.fallback_id
    while ref is not None:
        target = resolve(*parse_ref(ref, "fallback_id"))
        if target is None:
            break
        node = (target.name, target.version)
        path.append(node)
        if node in seen:
            return path, True
        seen.add(node)
        ref = target.fallback_id
    return path, False


def check_fallback_cycle(name: str, version: Optional[int], ref: str, resolve: Resolve,
                         becomes_live: bool = False, field: str = "fallback_id") -> None:
    """InvalidArgument if giving ``name:version`` the fallback ``ref`` closes a cycle: following
    fallback links from ``ref`` (``"name"``: that model's live version now, or this version if it
    ``becomes_live`` with this change, as a push may) comes back to this version. The message names
    the whole cycle: ``fallback cycle: a:1 -> b:2 -> a:1``. ``version`` None: a version being pushed
    that has no number yet (shown as ``a:new``)."""
    def resolve_after(n: str, v: Optional[int]):
        if becomes_live and n == name and v is None:
            return FallbackNode(name, version, None)
        return resolve(n, v)

    path, closed = fallback_path(FallbackNode(name, version, ref), resolve_after)
    if closed and path[-1] == path[0]:
        hops = " -> ".join(f"{n}:{'new' if v is None else v}" for n, v in path)
        raise InvalidArgument(f"{field}: fallback cycle: {hops}; a fallback chain must end at a version "
                              f"without a fallback")


def check_fallback_target(name: str, version: Optional[int], ref: Any, require: Callable[..., Any],
                          becomes_live: bool = False, field: str = "fallback_id") -> str:
    """The whole fallback rule (``Registry.check_fallback`` documents it) over ``require(name,
    version or None for live, field)``, which returns a record or raises ModelNotFound /
    VersionNotFound. Returns the normalised ``fallback_id``."""
    target_name, target_version, text = check_fallback_ref(name, version, ref, field)
    try:  # unpinned: the model's live version now (a fallback that resolves to nothing is a mistake)
        target = require(target_name, target_version, field)
    except ModelNotFound as e:
        raise type(e)(f"{e}; fallback {text!r} does not exist") from None
    if target.state == "failed":
        raise FailedPrecondition(f"{field}: {target.where} failed to load; it cannot be a fallback")

    def resolve(n: str, v: Optional[int]):
        try:
            return require(n, v, "")
        except ModelNotFound:
            return None

    check_fallback_cycle(name, version, text, resolve, becomes_live, field)
    return text


def check_sha(sha256: Any, field: str = "sha256") -> str:
    if not isinstance(sha256, str) or not SHA_RE.fullmatch(sha256):
        raise InvalidArgument(f"{field}: expected 64 lowercase hex digits, got {sha256!r}")
    return sha256


def to_json(value: Any, field: str, allow_none: bool = False) -> Optional[str]:
    """A mapping as canonical JSON text, else InvalidArgument naming ``field``."""
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{field}: expected a mapping, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{field}: not JSON-serialisable: {e}") from None


def check_seconds(value: Any, field: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidArgument(f"{field}: expected seconds >= 0, got {value!r}")
    return float(value)


def check_failure(failure: Any) -> Optional[str]:
    if failure is not None and (not isinstance(failure, str) or not failure.strip()):
        raise InvalidArgument(f"failure: expected a non-empty message, got {failure!r}")
    return failure


def initial_state(state: Optional[str], failure: Optional[str],
                  live: Optional[bool]) -> Tuple[Optional[str], Optional[bool]]:
    """(state to store, or None for "live or staged"; the live wish) from add_version's arguments."""
    if live not in (None, True, False):
        raise InvalidArgument(f"live: expected True, False or None, got {live!r}")
    if failure is not None:
        if state not in (None, "failed"):
            raise InvalidArgument(f"state: a version that failed to load is 'failed', not {state!r}")
        if live:
            raise InvalidArgument("live: a failed version is never live")
        return "failed", False
    if state == "failed":
        raise InvalidArgument("failure: a failed version must record its cause")
    if state == "live":
        if live is False:
            raise InvalidArgument("live: False contradicts state 'live'")
        return None, True
    if state not in (None, "staged", "canary"):
        raise InvalidArgument(f"state: a new version is staged, canary, live or failed, not {state!r}")
    if state is not None and live:
        raise InvalidArgument(f"live: True contradicts state {state!r}")
    return state, (False if state is not None else live)


@dataclass(frozen=True)
class VersionRecord:
    """One version of one model, as stored in the registry's metadata."""

    name: str
    """Model name."""
    version: int
    """Version number, increasing per model, never reused."""
    model_uri: str
    """Where the package was stored: a local directory or ``URL/<name>/<sha256>``."""
    sha256: str
    """Content hash of the package (see ``package_sha256``)."""
    runtime_env: dict
    """Backend and library versions captured at push; immutable."""
    config: dict
    """The package's model config, as plain data; immutable."""
    labels: dict
    """Free-form labels; immutable."""
    state: str
    """One of staged, canary, live, retired, failed."""
    is_live: bool
    """True for the one version that serves the model's traffic (exactly when state is live)."""
    fallback_id: Optional[str]
    """``"name:version"``, ``"name"`` (that model's live version when used) or None."""
    created_at: float
    """Unix time of the push."""
    model_load_time_s: Optional[float] = None
    """Seconds the last recorded load took."""
    fingerprint: Optional[dict] = None
    """Determinism fingerprint of the last recorded load."""
    failure: Optional[str] = None
    """Why the version failed to load, if it did."""

    @property
    def ref(self) -> str:
        """``"name:version"``."""
        return f"{self.name}:{self.version}"

    @property
    def where(self) -> str:
        """``"model 'name' version N"``, the prefix of error messages about this version."""
        return f"model {self.name!r} version {self.version}"

    def to_dict(self) -> dict:
        """Plain data (JSON-serialisable), with ``created_at`` also as ISO-8601 UTC."""
        d = asdict(self)
        d["created_at_iso"] = datetime.datetime.fromtimestamp(
            self.created_at, datetime.timezone.utc).isoformat(timespec="seconds")
        return d


@dataclass
class GcReport:
    """What ``gc`` removed."""

    versions: List[str] = field(default_factory=list)
    """Deleted versions, as ``"name:version"``."""
    packages: List[str] = field(default_factory=list)
    """Deleted package URIs (of deleted versions, orphans and uploads that never committed)."""
    temp: List[str] = field(default_factory=list)
    """Deleted temp directories of interrupted local pushes."""


COLUMNS = ("name, version, model_uri, sha256, runtime_env, config, labels, state, is_live, "
           "fallback_id, created_at, model_load_time_s, fingerprint, failure")


def record_from_row(row: tuple) -> VersionRecord:
    """A VersionRecord from a ``SELECT {COLUMNS}`` row."""
    (name, version, uri, sha, env, config, labels, state, is_live, fallback, created, load_s, fp,
     failure) = row
    return VersionRecord(name=name, version=version, model_uri=uri, sha256=sha,
                         runtime_env=json.loads(env), config=json.loads(config),
                         labels=json.loads(labels), state=state, is_live=bool(is_live),
                         fallback_id=fallback, created_at=created, model_load_time_s=load_s,
                         fingerprint=json.loads(fp) if fp is not None else None, failure=failure)


IMMUTABLE_COLUMNS = ("name", "version", "model_uri", "sha256", "runtime_env", "config", "labels", "created_at")
"""The columns of ``versions`` that no UPDATE may name once a version is written."""
IMMUTABLE_MESSAGE = (f"registry versions: {', '.join(IMMUTABLE_COLUMNS[:-1])} and {IMMUTABLE_COLUMNS[-1]} "
                     "are immutable")
VERSIONS_TRIGGER = f"""CREATE TRIGGER versions_immutable
BEFORE UPDATE OF {', '.join(IMMUTABLE_COLUMNS)} ON versions
BEGIN
  SELECT RAISE(ABORT, '{IMMUTABLE_MESSAGE}');
END"""
"""SQLite's trigger that refuses an UPDATE naming an immutable column (``_postgres`` has its twin)."""

ROLLOUT_STATUSES = ("canary", "promoted", "rolled_back", "aborted", "gate_failed")
"""A rollout's status: canary while active, then how it ended (gate_failed: never active)."""
EVENT_ACTIONS = ("start", "gate_failed", "advance", "promoted", "rolled_back", "aborted", "hold", "takeover",
                 "shadow_start", "shadow_stop")
"""The actions of the rollout history (``rollout_events``)."""

ROLLOUT_SCHEMA = (
    f"""CREATE TABLE rollouts (                      -- canary rollouts; ids are never reused
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,                      -- the canary (no foreign key: history outlives it)
  base_version INTEGER,                          -- the live version when it started
  steps TEXT NOT NULL,                           -- JSON list of weights in percent
  interval_s REAL NOT NULL CHECK (interval_s > 0),
  hold INTEGER NOT NULL CHECK (hold IN (0, 1)),
  skip_gate INTEGER NOT NULL CHECK (skip_gate IN (0, 1)),
  status TEXT NOT NULL CHECK (status IN {ROLLOUT_STATUSES}),
  step INTEGER NOT NULL CHECK (step >= 0),
  step_started_at REAL NOT NULL,
  started_at REAL NOT NULL,
  ended_at REAL,
  reason TEXT NOT NULL,
  CHECK ((status = 'canary') = (ended_at IS NULL))
)""",
    "CREATE UNIQUE INDEX rollouts_one_active ON rollouts(name) WHERE status = 'canary'",
    "CREATE INDEX rollouts_name ON rollouts(name, id)",
    f"""CREATE TABLE rollout_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  rollout_id INTEGER,                            -- NULL for shadow events
  at REAL NOT NULL,
  action TEXT NOT NULL CHECK (action IN {EVENT_ACTIONS}),
  reason TEXT NOT NULL,
  evidence TEXT NOT NULL                         -- JSON
)""",
    "CREATE INDEX rollout_events_name ON rollout_events(name, seq)",
    """CREATE TABLE shadows (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  share REAL NOT NULL CHECK (share > 0 AND share <= 100),
  started_at REAL NOT NULL,
  stopped_at REAL                                -- NULL while running
)""",
    "CREATE UNIQUE INDEX shadows_one_running ON shadows(name) WHERE stopped_at IS NULL",
    "CREATE TABLE leases (key TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)",
    """CREATE TABLE window_counts (                 -- each worker's cumulative counts of a window
  window TEXT NOT NULL, worker TEXT NOT NULL, arm TEXT NOT NULL,
  counts TEXT NOT NULL,                          -- JSON
  updated_at REAL NOT NULL,
  PRIMARY KEY (window, worker, arm)
)""",
    """CREATE TABLE predictions (
  name TEXT NOT NULL, request_id TEXT NOT NULL, version INTEGER NOT NULL,
  predicted TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (name, request_id, version)
)""",
    "CREATE INDEX predictions_at ON predictions(at)",
    """CREATE TABLE labels (
  name TEXT NOT NULL, request_id TEXT NOT NULL, label TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (name, request_id)
)""",
    "CREATE INDEX labels_at ON labels(at)",
    """CREATE TABLE traffic (                       -- requests per model, minute and worker
  name TEXT NOT NULL, minute INTEGER NOT NULL, worker TEXT NOT NULL, count INTEGER NOT NULL,
  PRIMARY KEY (name, minute, worker)
)""",
)
"""Tables of schema version 2: rollouts, their events, shadows, controller leases, window counts,
predictions and labels, traffic (``rollouts.RolloutStore``)."""

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",  # 'repository' -> its URL/path
    """CREATE TABLE models (
  name TEXT PRIMARY KEY,
  created_at REAL NOT NULL,
  last_version INTEGER NOT NULL DEFAULT 0        -- versions are never reused
)""",
    f"""CREATE TABLE versions (
  name TEXT NOT NULL REFERENCES models(name),
  version INTEGER NOT NULL CHECK (version > 0),
  model_uri TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  runtime_env TEXT NOT NULL,                     -- JSON
  config TEXT NOT NULL,                          -- JSON
  labels TEXT NOT NULL,                          -- JSON
  state TEXT NOT NULL CHECK (state IN {STATES}),
  is_live INTEGER NOT NULL DEFAULT 0 CHECK (is_live IN (0, 1)),
  fallback_id TEXT,                              -- 'name:version', 'name' or NULL
  created_at REAL NOT NULL,                      -- unix seconds
  model_load_time_s REAL,
  fingerprint TEXT,                              -- JSON
  failure TEXT,
  PRIMARY KEY (name, version),
  UNIQUE (name, sha256),
  CHECK ((state = 'live') = (is_live = 1))
)""",
    "CREATE UNIQUE INDEX versions_one_live ON versions(name) WHERE is_live = 1",
    """CREATE TABLE live_history (                  -- every change of live version; the active
  seq INTEGER PRIMARY KEY AUTOINCREMENT,         -- rows form the stack that rollback pops
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  action TEXT NOT NULL CHECK (action IN ('add', 'promote', 'rollback')),
  at REAL NOT NULL,
  active INTEGER NOT NULL DEFAULT 1
)""",
    "CREATE INDEX live_history_name ON live_history(name, seq)",
    VERSIONS_TRIGGER,
    *ROLLOUT_SCHEMA,
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
"""The metadata schema in SQLite's dialect, applied in one transaction to a new file (``_postgres``
translates each statement for PostgreSQL)."""

MIGRATIONS = {2: ROLLOUT_SCHEMA}
"""user_version N -> the statements that take a file of version N - 1 to N; ``Metadata`` runs them
with the new user_version in one write transaction."""
