"""Registry storage: version metadata in SQLite, immutable content-addressed artifacts.

Layout
------
A *local* repository (a directory path, or a ``file://`` URL) holds everything::

    DIR/registry.db                          metadata (SQLite, WAL mode)
    DIR/artifacts/<name>/<sha256>/...        one immutable package per model and content hash

A *remote* repository is any fsspec URL (``s3://bucket/prefix`` needs ``inferline[s3]``). The
artifacts live under the URL itself (``URL/<name>/<sha256>/...``); the metadata is a local SQLite
file: ``metadata_path`` if given, else ``$INFERLINE_REGISTRY_DB``, else
``~/.inferline/registries/<sha256(URL)[:16]>.db``. There is one metadata file per repository, and
it is the only owner of that repository's artifacts (``gc`` deletes packages that it does not
reference), so do not point metadata files on two machines at one remote URL: sharing metadata
across machines belongs to scale-out. S3 settings come from ``storage_options`` (passed to s3fs:
``endpoint_url``, ``key``, ``secret``, ``config_kwargs``, ...), then ``$INFERLINE_S3_ENDPOINT_URL``,
then botocore's usual ``AWS_*`` variables and files.

Packages
--------
``put_package`` stores files (relative name -> local path) as ``<name>/<sha256>/<relative name>``
plus ``MANIFEST.json``. The package sha256 is the sha256 of the text that ``sha256sum`` prints for
the files sorted by relative name (``"<file sha256>  <relative name>\\n"`` per file), so it can be
checked with shell tools. A package is *committed* once its manifest exists: locally it is written
under ``<name>/.tmp-*`` and renamed into place (atomic); remotely its files are uploaded first and
the manifest last (one atomic PUT). Readers ignore packages without a manifest. Committed packages
are never overwritten or modified; ``fetch`` re-hashes every file against the manifest and the
manifest against the version's sha256, and refuses any mismatch with ``TamperedArtifact``.

Versions and states
-------------------
Versions are integers increasing per model and never reused. Immutable once written (enforced by
a trigger): name, version, model_uri, sha256, runtime_env, config, labels, created_at. Mutable:
state, is_live, fallback_id, model_load_time_s, fingerprint, failure. States::

    staged  <-> canary <-> retired          set_state
    any of those -> live                    promote (the old live version becomes retired)
    live -> retired, previous live -> live  rollback
    non-live -> failed                      record_load(failure=...)  (or add_version(failure=...))
    failed -> staged                        record_load() of a successful load

At most one version per model is live, and a version is live exactly when ``is_live``. A
``fallback_id`` is ``"name:version"`` (pinned) or ``"name"`` (that model's live version when used).
``rollback`` pops the live history (``live_history``), so repeated rollbacks walk further back.

Retention
---------
After each ``add_version`` and in ``gc``: a model keeps its newest ``keep_versions`` (10) versions,
plus its live and canary versions and any version that some ``fallback_id`` pins; the others are
deleted with their packages. ``gc`` also deletes packages that no version references and temp
leftovers, once they are ``min_age_s`` old (an hour by default: a push may be in progress).

Concurrency
-----------
SQLite in WAL mode with a busy timeout: readers in any number of processes never block and see
whole transactions; every write is one ``BEGIN IMMEDIATE`` transaction. One ``Registry`` object may
be shared by the threads of a process (calls are serialised); open one per process (never share one
across ``fork``). Calls block (disk, network): from async code, run them in a thread. Artifact
deletion re-checks, under the write lock, that no version references the package, and
``add_version`` checks the package under that lock, so the two cannot race.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import sqlite3
import threading
import time
from typing import Any, Iterator, List, Mapping, Optional, Tuple

from ..errors import FailedPrecondition, InvalidArgument, ModelNotFound, Unavailable
from ._artifacts import (BUCKET_PROTOCOLS, TMP_PREFIX, ArtifactMissing, ArtifactStore, TamperedArtifact,
                         build_manifest, cause, check_rel, hash_file, package_sha256, parse_manifest,
                         short)
from ._records import (COLUMNS, SCHEMA, SCHEMA_VERSION, SHA_RE, STATES, GcReport, VersionNotFound,
                       VersionRecord, check_failure, check_name, check_seconds, check_sha,
                       check_version, initial_state, parse_ref, record_from_row, to_json)

__all__ = [
    "ArtifactMissing", "BUSY_TIMEOUT_S", "GC_MIN_AGE_S", "GcReport", "KEEP_VERSIONS", "Registry",
    "SCHEMA_VERSION", "STATES", "TamperedArtifact", "VersionNotFound", "VersionRecord", "check_name",
    "check_version", "default_metadata_path", "package_sha256", "parse_ref",
]

log = logging.getLogger(__name__)

KEEP_VERSIONS = 10
"""Versions kept per model by retention (live, canary and fallback-target versions come on top)."""
BUSY_TIMEOUT_S = 10.0
"""How long a writer waits for another writer's transaction before giving up (Unavailable)."""
GC_MIN_AGE_S = 3600.0
"""``gc`` keeps unreferenced packages and temp files younger than this (a push may be running)."""

_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.S)


def default_metadata_path(url: str) -> str:
    """Where a remote repository's metadata lives by default: one file per repository URL."""
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~"), ".inferline", "registries", f"{key}.db")


def _connect(path: str) -> sqlite3.Connection:
    # Switching a new file to WAL takes an exclusive lock, and SQLite can report
    # "database is locked" for it at once, without its busy handler, while other
    # processes open the same new file: retry that for up to the busy timeout.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db, mode = _open_wal(path)
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise Unavailable(f"registry metadata {path}: cannot open it: {cause(e)}") from None
            time.sleep(0.01 + random.random() * 0.05)
        except (OSError, sqlite3.Error) as e:
            raise Unavailable(f"registry metadata {path}: cannot open it: {cause(e)}") from None
    if str(mode).lower() != "wal":
        db.close()
        raise FailedPrecondition(f"registry metadata {path}: SQLite refused WAL mode (got {mode!r}); "
                                 "keep the metadata file on a local filesystem")
    return db


def _open_wal(path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        db.close()
        raise
    return db, mode


class Registry:
    """Versions of models: metadata in SQLite, immutable packages in a directory or object store.

    Create one with ``Registry.open``; see the module docstring for the layout, states and
    concurrency rules. Every method raises ``inferline.errors`` classes naming the model, version
    and field at fault: InvalidArgument (bad names, refs, fields), ModelNotFound / VersionNotFound,
    FailedPrecondition (rule violations; TamperedArtifact, ArtifactMissing), Unavailable (storage
    or metadata unreachable or busy).
    """

    def __init__(self, repository: str, artifacts: ArtifactStore, metadata_path: str,
                 keep_versions: int = KEEP_VERSIONS):
        """Internal: use ``Registry.open``."""
        self.repository = repository
        """The repository: an absolute directory path, or the URL without a trailing '/'."""
        self.metadata_path = metadata_path
        """The SQLite metadata file."""
        self.keep_versions = keep_versions
        """Versions kept per model by retention."""
        self._artifacts = artifacts
        self._lock = threading.RLock()
        self._db = _connect(metadata_path)
        try:
            self._init_schema()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def open(cls, repository: str, metadata_path: Optional[str] = None, *,
             storage_options: Optional[Mapping[str, Any]] = None,
             keep_versions: int = KEEP_VERSIONS) -> "Registry":
        """Opens (creating if needed) the registry at ``repository``.

        ``repository`` is a directory (created if missing; ``file://`` URLs count as directories):
        metadata in ``DIR/registry.db`` (unless ``metadata_path``), artifacts in ``DIR/artifacts/``.
        Any other fsspec URL (``s3://bucket/prefix``) is a remote repository: artifacts under the
        URL, metadata in ``metadata_path``, else ``$INFERLINE_REGISTRY_DB``, else
        ``default_metadata_path(url)``. ``storage_options`` go to the fsspec filesystem (for s3:
        ``endpoint_url``, ``key``, ``secret``, ``config_kwargs={"connect_timeout": ...}``);
        ``$INFERLINE_S3_ENDPOINT_URL`` is the default s3 endpoint.

        Raises InvalidArgument for a malformed repository or options, Unavailable when the
        repository (bucket, endpoint) or the metadata file cannot be reached, FailedPrecondition
        when a needed package (s3fs) is missing or the metadata belongs to another repository.
        """
        if not isinstance(repository, str) or not repository.strip():
            raise InvalidArgument(f"repository: expected a directory or URL, got {repository!r}")
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 1:
            raise InvalidArgument(f"keep_versions: expected a positive integer, got {keep_versions!r}")
        m = _URL_RE.fullmatch(repository)
        protocol = m.group(1).lower() if m else None
        if protocol in (None, "file", "local"):
            root = os.path.abspath(os.path.expanduser(m.group(2) if m else repository))
            if os.path.exists(root) and not os.path.isdir(root):
                raise InvalidArgument(f"repository {repository!r}: {root} is not a directory")
            try:
                os.makedirs(os.path.join(root, "artifacts"), exist_ok=True)
            except OSError as e:
                raise Unavailable(f"repository {repository!r}: cannot create it: {cause(e)}") from None
            artifacts = ArtifactStore.local_dir(os.path.join(root, "artifacts"))
            db = metadata_path or os.path.join(root, "registry.db")
            key = root
        else:
            if not m.group(2).strip("/"):
                what = "BUCKET[/PREFIX]" if protocol in BUCKET_PROTOCOLS else "PATH"
                raise InvalidArgument(f"repository {repository!r}: expected {protocol}://{what}")
            key = repository.rstrip("/")
            artifacts = ArtifactStore.remote(key, protocol, storage_options)
            db = metadata_path or os.environ.get("INFERLINE_REGISTRY_DB") or default_metadata_path(key)
        return cls(key, artifacts, os.path.abspath(os.path.expanduser(db)), keep_versions)

    @property
    def is_remote(self) -> bool:
        """True when artifacts live under a URL rather than in the repository directory."""
        return not self._artifacts.local

    @property
    def artifacts_root(self) -> str:
        """Where packages live: ``DIR/artifacts`` or the repository URL."""
        return self._artifacts.root if self._artifacts.local else self._artifacts.url

    def close(self) -> None:
        """Closes the metadata connection (artifacts need no closing)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.repository!r}, metadata_path={self.metadata_path!r})"

    # --------------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def _sql_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            busy = " (another writer held it longer than the busy timeout)" if "locked" in str(e) else ""
            raise Unavailable(f"registry metadata {self.metadata_path}: {cause(e)}{busy}") from None
        except sqlite3.IntegrityError as e:
            raise FailedPrecondition(f"registry metadata {self.metadata_path}: {e}") from None

    @contextlib.contextmanager
    def _tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE for writes (one writer at a time), a snapshot for reads."""
        with self._lock, self._sql_errors():
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _init_schema(self) -> None:
        with self._tx(write=False) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            with self._tx(write=True) as db:
                if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                    for stmt in SCHEMA:
                        db.execute(stmt)
                    db.execute("INSERT INTO meta VALUES ('repository', ?)", (self.repository,))
                version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(f"registry metadata {self.metadata_path}: schema version {version} "
                                     f"is newer than this inferline's ({SCHEMA_VERSION}); upgrade inferline")
        with self._tx(write=False) as db:
            owner = db.execute("SELECT value FROM meta WHERE key = 'repository'").fetchone()
        if self.is_remote and owner and owner[0] != self.repository:
            raise FailedPrecondition(f"registry metadata {self.metadata_path} belongs to repository "
                                     f"{owner[0]!r}, not {self.repository!r}; pass another metadata_path")

    # ---------------------------------------------------------------------------------- reads

    def _row(self, db, name: str, version: int) -> Optional[VersionRecord]:
        row = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? AND version = ?",
                         (name, version)).fetchone()
        return record_from_row(row) if row else None

    def _live_row(self, db, name: str) -> Optional[VersionRecord]:
        row = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? AND is_live = 1",
                         (name,)).fetchone()
        return record_from_row(row) if row else None

    def _require(self, db, name: str, version: Optional[int], field: str = "") -> VersionRecord:
        """The version (the live one if None), else ModelNotFound / VersionNotFound."""
        rec = self._live_row(db, name) if version is None else self._row(db, name, version)
        if rec is not None:
            return rec
        prefix = f"{field}: " if field else ""
        if not db.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
            raise ModelNotFound(f"{prefix}model {name!r} not found in repository {self.repository!r}")
        if version is None:
            raise VersionNotFound(f"{prefix}model {name!r} has no live version")
        raise VersionNotFound(f"{prefix}model {name!r} version {version} not found "
                              f"in repository {self.repository!r}")

    def get(self, name: str, version: Optional[int] = None) -> VersionRecord:
        """The record of ``name`` at ``version``, or of its live version when version is None."""
        check_name(name, "name")
        version = None if version is None else check_version(version)
        with self._tx(write=False) as db:
            return self._require(db, name, version)

    def resolve(self, ref: str) -> VersionRecord:
        """The record for ``"name[:version]"`` (no version: the live one), e.g. a fallback_id."""
        name, version = parse_ref(ref, "ref")
        return self.get(name, version)

    def list(self, name: Optional[str] = None) -> List[VersionRecord]:
        """All versions (of one model if ``name`` is given; ModelNotFound if it has none), ordered
        by name then version."""
        if name is None:
            with self._tx(write=False) as db:
                rows = db.execute(f"SELECT {COLUMNS} FROM versions ORDER BY name, version").fetchall()
            return [record_from_row(r) for r in rows]
        check_name(name, "name")
        with self._tx(write=False) as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? ORDER BY version",
                              (name,)).fetchall()
        if not rows:
            raise ModelNotFound(f"model {name!r} not found in repository {self.repository!r}")
        return [record_from_row(r) for r in rows]

    def models(self) -> List[str]:
        """Names of the models that have at least one version, sorted."""
        with self._tx(write=False) as db:
            return [r[0] for r in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def find(self, name: str, sha256: str) -> Optional[VersionRecord]:
        """The version of ``name`` whose package has this sha256, or None (a push can skip work)."""
        check_name(name, "name")
        check_sha(sha256)
        with self._tx(write=False) as db:
            return self._find(db, name, sha256)

    def _find(self, db, name: str, sha256: str) -> Optional[VersionRecord]:
        row = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? AND sha256 = ?",
                         (name, sha256)).fetchone()
        return record_from_row(row) if row else None

    # ------------------------------------------------------------------------------- packages

    def put_package(self, name: str, files: Mapping[str, str]) -> Tuple[str, str]:
        """Stores a package's files and returns ``(model_uri, sha256)``.

        ``files`` maps relative names (``"model.onnx"``, ``"golden/inputs.npz"``) to local paths.
        The package is content-addressed (see ``package_sha256``) and committed atomically; an
        identical package already stored is reused, never overwritten. Nothing is recorded in
        the metadata: pass the result to ``add_version``, or to ``discard_package`` if the push
        fails before that.
        """
        check_name(name, "name")
        if not isinstance(files, Mapping) or not files:
            raise InvalidArgument("files: a package needs at least one file (relative name -> local path)")
        rels = sorted(check_rel(rel) for rel in files)
        dirs = {"/".join(rel.split("/")[:i]) for rel in rels for i in range(1, rel.count("/") + 1)}
        if dirs & set(rels):
            raise InvalidArgument(f"files: {sorted(dirs & set(rels))[0]!r} is both a file and a directory")
        entries, listing = [], []
        for rel in rels:
            src = os.fspath(files[rel])
            try:
                sha, size = hash_file(src)
            except OSError as e:
                raise InvalidArgument(f"files[{rel!r}]: cannot read {src!r}: {cause(e)}") from None
            entries.append((rel, src, sha))
            listing.append({"name": rel, "sha256": sha, "size": size})
        sha, manifest = build_manifest(name, listing)
        uri = self._artifacts.uri(name, sha)
        existing = self._artifacts.read_manifest(name, sha)
        if existing is not None:  # reuse it, never overwrite
            parse_manifest(existing, sha, f"model {name!r}: package {uri}")
        else:
            self._artifacts.put(name, sha, entries, manifest)
        return uri, sha

    def discard_package(self, name: str, sha256: str) -> bool:
        """Deletes a stored package that no version references (a push that failed before
        ``add_version``). Returns whether a package was deleted; referenced ones are kept."""
        check_name(name, "name")
        check_sha(sha256)
        return self._remove_unreferenced(name, sha256) is not None

    def _remove_unreferenced(self, name: str, sha256: str) -> Optional[str]:
        """Deletes the package unless a version references it; the check and the deletion happen
        under the write lock, so add_version cannot record it meanwhile. Returns its URI if deleted."""
        with self._tx(write=True) as db:
            if db.execute("SELECT 1 FROM versions WHERE name = ? AND sha256 = ?", (name, sha256)).fetchone():
                return None
            if not self._artifacts.remove(self._artifacts.path(name, sha256)):
                return None
            return self._artifacts.uri(name, sha256)

    # ------------------------------------------------------------------------------- versions

    def add_version(self, name: str, sha256: str, model_uri: str, *, runtime_env: Mapping[str, Any],
                    config: Optional[Mapping[str, Any]] = None,
                    labels: Optional[Mapping[str, Any]] = None, fallback_id: Optional[str] = None,
                    state: Optional[str] = None, model_load_time_s: Optional[float] = None,
                    fingerprint: Optional[Mapping[str, Any]] = None, failure: Optional[str] = None,
                    live: Optional[bool] = None) -> VersionRecord:
        """Records a new version of ``name`` for a stored package, in one transaction.

        The version is the model's previous highest + 1. If this package (sha256) is already a
        version of the model, that record is returned unchanged (promoted first if ``live`` is
        True). A new version becomes live if ``live`` is True, or if ``live`` is None, ``state``
        is None and the model has no live version (its first good push); otherwise it is
        ``state`` (staged by default). ``failure`` records a version that failed to load: its
        state is failed and it is never live. ``fallback_id`` (``"name[:version]"``) must exist.
        Retention then deletes this model's versions beyond ``keep_versions``.
        """
        check_name(name, "name")
        check_sha(sha256)
        if model_uri != self._artifacts.uri(name, sha256):
            raise InvalidArgument(f"model_uri: {model_uri!r} is not where this repository stores model "
                                  f"{name!r} package {short(sha256)} ({self._artifacts.uri(name, sha256)!r})")
        values = (to_json(runtime_env, "runtime_env"), to_json(config or {}, "config"),
                  to_json(labels or {}, "labels"), check_seconds(model_load_time_s, "model_load_time_s"),
                  to_json(fingerprint, "fingerprint", allow_none=True), check_failure(failure))
        state, live = initial_state(state, failure, live)
        ref = None if fallback_id is None else parse_ref(fallback_id, "fallback_id")
        with self._tx(write=True) as db:
            existing = self._find(db, name, sha256)
            if existing is not None:
                if live and not existing.is_live and existing.state != "failed":
                    self._set_live(db, name, existing.version, "promote")
                return self._row(db, name, existing.version)
            raw = self._artifacts.read_manifest(name, sha256)  # under the lock: gc cannot race it
            if raw is None:
                raise ArtifactMissing(f"model {name!r}: package {model_uri} is not stored (or gc "
                                      "deleted it); put_package it again")
            parse_manifest(raw, sha256, f"model {name!r}: package {model_uri}")
            now = time.time()
            db.execute("INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)", (name, now))
            db.execute("UPDATE models SET last_version = last_version + 1 WHERE name = ?", (name,))
            version = db.execute("SELECT last_version FROM models WHERE name = ?", (name,)).fetchone()[0]
            fb = None if ref is None else self._check_fallback(db, name, version, ref)
            make_live = live is True or (live is None and self._live_row(db, name) is None)
            db.execute("INSERT INTO versions (name, version, model_uri, sha256, runtime_env, config, "
                       "labels, model_load_time_s, fingerprint, failure, state, fallback_id, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (name, version, model_uri, sha256) + values + (state or "staged", fb, now))
            if make_live:
                self._set_live(db, name, version, "add")
            record = self._row(db, name, version)
            victims = self._retention(db, name)
        self._remove_victims(name, victims, GcReport())
        return record

    def _set_live(self, db, name: str, version: int, action: str) -> None:
        """Makes ``version`` the live one (the previous live becomes retired) and records it."""
        db.execute("UPDATE versions SET is_live = 0, state = 'retired' WHERE name = ? AND is_live = 1",
                   (name,))
        db.execute("UPDATE versions SET is_live = 1, state = 'live' WHERE name = ? AND version = ?",
                   (name, version))
        db.execute("INSERT INTO live_history (name, version, action, at) VALUES (?, ?, ?, ?)",
                   (name, version, action, time.time()))

    def _check_fallback(self, db, name: str, version: int, ref: Tuple[str, Optional[int]]) -> str:
        """The normalised fallback_id after checking that its target exists and can serve."""
        target_name, target_version = ref
        text = target_name if target_version is None else f"{target_name}:{target_version}"
        if target_name == name and target_version in (None, version):
            hint = "; a fallback within the same model must name a version" if target_version is None else ""
            raise InvalidArgument(f"fallback_id: {text!r} refers to model {name!r} version {version} "
                                  f"itself{hint}")
        target = self._require(db, target_name, target_version, field="fallback_id")
        if target.state == "failed":
            raise FailedPrecondition(f"fallback_id: {target.where} failed to load; it cannot be a fallback")
        return text

    def promote(self, name: str, version: int) -> VersionRecord:
        """Makes ``version`` live; the previous live version becomes retired (rollback returns
        to it). Promoting the live version changes nothing; a failed version cannot be live."""
        check_name(name, "name")
        version = check_version(version)
        with self._tx(write=True) as db:
            rec = self._require(db, name, version)
            if rec.state == "failed":
                raise FailedPrecondition(f"{rec.where} failed to load ({rec.failure}); it cannot be live")
            if not rec.is_live:
                self._set_live(db, name, version, "promote")
            return self._row(db, name, version)

    def rollback(self, name: str) -> VersionRecord:
        """Makes the previous live version live again (the current one becomes retired) and
        returns it. Repeated rollbacks walk further back through the live history, skipping
        versions that were deleted or failed; FailedPrecondition if there is none."""
        check_name(name, "name")
        with self._tx(write=True) as db:
            current = self._require(db, name, None)
            stack = db.execute("SELECT seq, version FROM live_history WHERE name = ? AND active = 1 "
                               "AND version != ? ORDER BY seq DESC", (name, current.version)).fetchall()
            for seq, version in stack:
                target = self._row(db, name, version)
                if target is not None and target.state != "failed":
                    db.execute("UPDATE live_history SET active = 0 WHERE name = ? AND seq >= ?", (name, seq))
                    self._set_live(db, name, version, "rollback")
                    return self._row(db, name, version)
        raise FailedPrecondition(f"model {name!r}: no earlier live version to roll back to "
                                 f"(version {current.version} is live)")

    def set_fallback(self, name: str, version: Optional[int], to: Optional[str]) -> VersionRecord:
        """Sets (``to="name[:version]"``) or clears (``to=None``) the fallback of ``name:version``
        (the live version if None). Without a version the fallback follows that model's live
        version. The target must exist (ModelNotFound / VersionNotFound naming fallback_id), not be
        failed, and not be the version itself."""
        check_name(name, "name")
        version = None if version is None else check_version(version)
        ref = None if to is None else parse_ref(to, "fallback_id")
        with self._tx(write=True) as db:
            rec = self._require(db, name, version)
            text = None if ref is None else self._check_fallback(db, name, rec.version, ref)
            db.execute("UPDATE versions SET fallback_id = ? WHERE name = ? AND version = ?",
                       (text, name, rec.version))
            return self._row(db, name, rec.version)

    def set_state(self, name: str, version: int, state: str) -> VersionRecord:
        """Moves a version between staged, canary and retired (e.g. the canary controller). The
        live version changes only through promote/rollback, and failed only through record_load."""
        check_name(name, "name")
        version = check_version(version)
        if state not in ("staged", "canary", "retired"):
            hint = {"live": "use promote", "failed": "use record_load(failure=...)"}.get(
                state, "expected staged, canary or retired")
            raise InvalidArgument(f"state: cannot set {state!r}: {hint}")
        with self._tx(write=True) as db:
            rec = self._require(db, name, version)
            if rec.is_live:
                raise FailedPrecondition(f"{rec.where} is live: promote another version or roll back first")
            if rec.state == "failed":
                raise FailedPrecondition(f"{rec.where} failed to load: record a successful load first")
            db.execute("UPDATE versions SET state = ? WHERE name = ? AND version = ?", (state, name, version))
            return self._row(db, name, version)

    def record_load(self, name: str, version: int, *, model_load_time_s: Optional[float] = None,
                    fingerprint: Optional[Mapping[str, Any]] = None,
                    failure: Optional[str] = None) -> VersionRecord:
        """Records the outcome of loading a version; only these mutable fields change (given
        ones; None keeps the stored value). A failure marks a non-live version failed (a live
        version keeps serving elsewhere: its failure is recorded, and the operator rolls back); a
        success clears the failure and returns a failed version to staged."""
        check_name(name, "name")
        version = check_version(version)
        load_s = check_seconds(model_load_time_s, "model_load_time_s")
        fp = to_json(fingerprint, "fingerprint", allow_none=True)
        failure = check_failure(failure)
        with self._tx(write=True) as db:
            rec = self._require(db, name, version)
            if failure is not None:
                state = rec.state if rec.is_live else "failed"
            else:
                state = "staged" if rec.state == "failed" else rec.state
            db.execute("UPDATE versions SET state = ?, failure = ?, "
                       "model_load_time_s = COALESCE(?, model_load_time_s), "
                       "fingerprint = COALESCE(?, fingerprint) WHERE name = ? AND version = ?",
                       (state, failure, load_s, fp, name, version))
            return self._row(db, name, version)

    # ---------------------------------------------------------------------- retention and gc

    def _retention(self, db, name: str) -> List[Tuple[int, str]]:
        """Deletes the metadata of ``name``'s versions beyond the newest ``keep_versions``, except
        live, canary and fallback targets; returns (version, sha256) of the deleted ones."""
        rows = db.execute("SELECT version, sha256, state FROM versions WHERE name = ? "
                          "ORDER BY version DESC", (name,)).fetchall()
        if len(rows) <= self.keep_versions:
            return []
        pinned = {r[0] for r in db.execute("SELECT DISTINCT fallback_id FROM versions "
                                           "WHERE fallback_id IS NOT NULL")}
        victims = [(v, sha) for v, sha, state in rows[self.keep_versions:]
                   if state not in ("live", "canary") and f"{name}:{v}" not in pinned]
        db.executemany("DELETE FROM versions WHERE name = ? AND version = ?",
                       [(name, v) for v, _ in victims])
        return victims

    def _remove_victims(self, name: str, victims: List[Tuple[int, str]], report: GcReport) -> None:
        """Deletes the packages of versions that retention removed (best effort: a storage error
        leaves an orphan for gc)."""
        for version, sha in victims:
            report.versions.append(f"{name}:{version}")
            try:
                uri = self._remove_unreferenced(name, sha)
            except Unavailable as e:
                log.warning("retention: could not delete the package of %s:%s: %s", name, version, e)
                continue
            if uri is not None:
                report.packages.append(uri)

    def gc(self, min_age_s: float = GC_MIN_AGE_S) -> GcReport:
        """Applies retention to every model, then deletes orphaned artifacts: packages that no
        version references (including uploads that never committed) and temp leftovers of
        interrupted pushes. Orphans younger than ``min_age_s`` are kept, since a push may be
        between put_package and add_version. Returns what was removed."""
        if isinstance(min_age_s, bool) or not isinstance(min_age_s, (int, float)) or not min_age_s >= 0:
            raise InvalidArgument(f"min_age_s: expected seconds >= 0, got {min_age_s!r}")
        report = GcReport()
        with self._tx(write=True) as db:
            names = [r[0] for r in db.execute("SELECT name FROM models ORDER BY name")]
            victims = {name: self._retention(db, name) for name in names}
        for name in names:
            self._remove_victims(name, victims[name], report)
        with self._tx(write=False) as db:
            referenced = set(db.execute("SELECT name, sha256 FROM versions").fetchall())
        for name, entry, path in self._artifacts.scan():
            temp = entry.startswith(TMP_PREFIX)
            if not temp and (not SHA_RE.fullmatch(entry) or (name, entry) in referenced):
                continue
            if min_age_s > 0 and self._artifacts.age_s(path) < min_age_s:
                continue
            if temp:
                if self._artifacts.remove(path):
                    report.temp.append(path)
            else:
                uri = self._remove_unreferenced(name, entry)
                if uri is not None:
                    report.packages.append(uri)
        return report

    # ---------------------------------------------------------------------------------- fetch

    def fetch(self, record: VersionRecord, dest_dir: Optional[str] = None) -> str:
        """Verifies a version's package and returns a local directory holding its files.

        Every file is hashed and checked against the manifest, and the manifest against the
        record's sha256; any mismatch raises TamperedArtifact, a missing package or file
        ArtifactMissing. A local repository's package is verified in place and its directory
        returned (``dest_dir`` is ignored). A remote one is downloaded into ``dest_dir`` (default:
        ``<metadata file>-cache/<name>/<sha256>``), keeping files already there that verify.
        """
        name, sha = check_name(record.name, "name"), check_sha(record.sha256)
        dest = None
        if self.is_remote:
            dest = os.path.abspath(dest_dir or os.path.join(
                os.path.splitext(self.metadata_path)[0] + "-cache", name, sha))
        return self._artifacts.materialize(name, sha, record.where, dest)
