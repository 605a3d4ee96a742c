"""Registry storage: version metadata in SQLite or PostgreSQL, immutable content-addressed artifacts.

Layout
------
A *local* repository (a directory path, or a ``file://`` URL) holds everything::

    DIR/registry.db                          metadata (SQLite, WAL mode)
    DIR/artifacts/<name>/<sha256>/...        one immutable package per model and content hash

A *remote* repository is any fsspec URL (``s3://bucket/prefix`` needs ``inferline[s3]``). The
artifacts live under the URL itself (``URL/<name>/<sha256>/...``); the metadata is a local SQLite
file: ``metadata_path`` if given, else ``$INFERLINE_REGISTRY_DB``, else
``~/.inferline/registries/<sha256(URL)[:16]>.db``. There is one metadata store per repository, and
it is the only owner of that repository's artifacts (``gc`` deletes packages that it does not
reference), so do not point metadata files on two machines at one remote URL: machines that share a
repository share its metadata in PostgreSQL instead (below). S3 settings come from
``storage_options`` (passed to s3fs: ``endpoint_url``, ``key``, ``secret``, ``config_kwargs``, ...),
then ``$INFERLINE_S3_ENDPOINT_URL``, then botocore's usual ``AWS_*`` variables and files.

Metadata on PostgreSQL
----------------------
A ``metadata_path`` (or ``$INFERLINE_REGISTRY_DB``) of the form
``postgresql://user:password@host:port/dbname`` (or ``postgres://``; psycopg 3, ``pip install
'inferline[postgres]'``) keeps the metadata in that database instead of a file, with the same
schema, rules and errors (``_postgres``), so that the servers and CLIs of many machines share one
registry (its artifacts under one URL, e.g. ``s3://``). A PostgreSQL URL in
``$INFERLINE_REGISTRY_DB`` applies to local repository directories too (their artifacts stay in
``DIR/artifacts``); a file path there applies to remote repositories only. A database holds one
registry. ``metadata_path`` and messages show the URL with its password masked.

Packages
--------
``put_package`` stores files as ``<name>/<sha256>/<relative name>`` plus ``MANIFEST.json``,
content-addressed and committed atomically (see ``_artifacts``: the sha256 is what ``sha256sum``
prints for the sorted files, so shell tools can check it). Committed packages are never
overwritten; ``fetch`` re-hashes every file and refuses any mismatch with ``TamperedArtifact``.

Versions and states
-------------------
Versions are integers increasing per model and never reused. Immutable once written (enforced by
a trigger): name, version, model_uri, sha256, runtime_env, config, labels, created_at. Mutable:
state, is_live, fallback_id, model_load_time_s, fingerprint, failure. A version is born staged,
canary, live or failed (``add_version``); its state then moves only along the one checked table
in ``_states`` (``TRANSITIONS``): set_state between staged, canary and retired; promote and
rollback to and from live; record_load to and from failed.

At most one version per model is live, and a version is live exactly when ``is_live``. A
``fallback_id`` is ``"name:version"`` (pinned) or ``"name"`` (that model's live version when used),
of any model but never the version itself, closing no cycle (``check_fallback``, for pushes and
set_fallback alike; a promote or rollback may still close one through a ``"name"`` link).
``rollback`` pops the live history (``live_history``), so repeated rollbacks walk further back.

Retention
---------
After each ``add_version`` and in ``gc``: a model keeps its newest ``keep_versions`` (10) versions,
plus its live and canary versions and any version that some ``fallback_id`` pins; the others are
deleted with their packages. ``gc`` also deletes packages that no version references and temp
leftovers, once they are ``min_age_s`` old (an hour by default: a push may be in progress).

Rollouts and shadows
--------------------
``Registry.rollouts`` (a ``RolloutStore``, see ``rollouts``) stores canary rollouts (at most one
active per model; its version is in state canary; ``finish`` promotes exactly as ``promote`` does),
shadows (at most one running per model), their history, and what their controller reads: leases,
per-worker window counts, predictions and labels, traffic per minute. Retention also keeps the
versions of an active rollout or a running shadow. Schema version 2 added these tables; a version-1
metadata file is migrated when it is opened.

Concurrency
-----------
SQLite in WAL mode with a busy timeout: readers in any number of processes never block and see
whole transactions; every write is one ``BEGIN IMMEDIATE`` transaction. On PostgreSQL the same
holds across machines: reads are snapshots, and every write transaction first takes the database's
registry lock (an advisory lock, waiting at most the busy timeout), so writers take turns exactly
as SQLite's single writer does. One ``Registry`` object may be shared by the threads of a process
(calls are serialised); open one per process (never share one across ``fork``). Calls block
(disk, network): from async code, run them in a thread. Artifact deletion re-checks, under the
write lock, that no version references the package, and ``add_version`` checks the package under
that lock, so the two cannot race.
"""

from __future__ import annotations

import os
import time
from typing import Any, List, Mapping, Optional, Tuple, Union

from ..errors import FailedPrecondition, InvalidArgument, ModelNotFound
from ._artifacts import (ArtifactMissing, ArtifactStore, PackageDigest, TamperedArtifact,
                         digest_package, package_sha256, parse_manifest, short)
from ._location import default_metadata_path, locate
from ._metadata import Metadata
from ._records import (SCHEMA_VERSION, GcReport, VersionNotFound, VersionRecord, check_failure,
                       check_fallback_ref, check_fallback_target, check_name, check_seconds, check_sha,
                       check_version, initial_state, parse_ref, to_json)
from ._retention import collect, remove_unreferenced, remove_victims
from ._states import STATES, TRANSITIONS
from .rollouts import Rollout, RolloutEvent, RolloutStore, Shadow

__all__ = [
    "ArtifactMissing", "GC_MIN_AGE_S", "GcReport", "KEEP_VERSIONS", "PackageDigest", "Registry", "Rollout",
    "RolloutEvent", "RolloutStore", "SCHEMA_VERSION", "STATES", "Shadow", "TRANSITIONS", "TamperedArtifact",
    "VersionNotFound", "VersionRecord", "check_name", "check_version", "default_metadata_path", "digest_package",
    "package_sha256", "parse_ref",
]

KEEP_VERSIONS = 10
"""Versions kept per model by retention (live, canary and fallback-target versions come on top)."""
GC_MIN_AGE_S = 3600.0
"""``gc`` keeps unreferenced packages and temp files younger than this (a push may be running)."""

class Registry:
    """Versions of models: metadata in SQLite or PostgreSQL, immutable packages in a directory or
    object store.

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
        self.keep_versions = keep_versions
        """Versions kept per model by retention."""
        self._artifacts = artifacts
        self._meta = Metadata(metadata_path, repository, check_owner=not artifacts.local)
        self.metadata_path = self._meta.path
        """The SQLite metadata file, or the PostgreSQL URL with its password masked."""
        self._rollouts = RolloutStore(self._meta)

    @classmethod
    def open(cls, repository: str, metadata_path: Optional[str] = None, *,
             storage_options: Optional[Mapping[str, Any]] = None,
             keep_versions: int = KEEP_VERSIONS) -> "Registry":
        """Opens (creating if needed) the registry at ``repository``.

        ``repository`` is a directory (created if missing; ``file://`` URLs count as directories):
        metadata in ``DIR/registry.db`` (unless ``metadata_path``), artifacts in ``DIR/artifacts/``.
        Any other fsspec URL (``s3://bucket/prefix``) is a remote repository: artifacts under the
        URL, metadata in ``metadata_path``, else ``$INFERLINE_REGISTRY_DB``, else
        ``default_metadata_path(url)``. A ``postgresql://user:password@host:port/dbname`` URL as
        ``metadata_path`` (or in ``$INFERLINE_REGISTRY_DB``, for local directories too) keeps the
        metadata in that PostgreSQL database (see the module docstring). ``storage_options`` go
        to the fsspec filesystem (for s3: ``endpoint_url``, ``key``, ``secret``,
        ``config_kwargs={"connect_timeout": ...}``); ``$INFERLINE_S3_ENDPOINT_URL`` is the default
        s3 endpoint.

        Raises InvalidArgument for a malformed repository or options, Unavailable when the
        repository (bucket, endpoint) or the metadata (file or database) cannot be reached,
        FailedPrecondition when a needed package (s3fs, psycopg) is missing or the metadata belongs
        to another repository.
        """
        if isinstance(keep_versions, bool) or not isinstance(keep_versions, int) or keep_versions < 1:
            raise InvalidArgument(f"keep_versions: expected a positive integer, got {keep_versions!r}")
        key, artifacts, db = locate(repository, metadata_path, storage_options)
        return cls(key, artifacts, db, keep_versions)

    @property
    def is_remote(self) -> bool:
        """True when artifacts live under a URL rather than in the repository directory."""
        return not self._artifacts.local

    @property
    def rollouts(self) -> RolloutStore:
        """Canary rollouts, shadows and their controller's feeds, stored in this registry's
        metadata (one store per Registry, sharing its transactions)."""
        return self._rollouts

    @property
    def artifacts_root(self) -> str:
        """Where packages live: ``DIR/artifacts`` or the repository URL."""
        return self._artifacts.root if self._artifacts.local else self._artifacts.url

    def close(self) -> None:
        """Closes the metadata connection (artifacts need no closing)."""
        self._meta.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.repository!r}, metadata_path={self.metadata_path!r})"

    # ---------------------------------------------------------------------------------- reads

    def get(self, name: str, version: Optional[int] = None) -> VersionRecord:
        """The record of ``name`` at ``version``, or of its live version when version is None."""
        check_name(name, "name")
        version = None if version is None else check_version(version)
        with self._meta.tx(write=False) as db:
            return self._meta.require(db, name, version)

    def resolve(self, ref: str) -> VersionRecord:
        """The record for ``"name[:version]"`` (no version: the live one), e.g. a fallback_id."""
        name, version = parse_ref(ref, "ref")
        return self.get(name, version)

    def list(self, name: Optional[str] = None) -> List[VersionRecord]:
        """All versions (of one model if ``name`` is given; ModelNotFound if it has none), ordered
        by name then version."""
        if name is not None:
            check_name(name, "name")
        with self._meta.tx(write=False) as db:
            records = self._meta.rows(db, name)
        if name is not None and not records:
            raise ModelNotFound(f"model {name!r} not found in repository {self.repository!r}")
        return records

    def models(self) -> List[str]:
        """Names of the models that have at least one version, sorted."""
        with self._meta.tx(write=False) as db:
            return [r[0] for r in db.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def find(self, name: str, sha256: str) -> Optional[VersionRecord]:
        """The version of ``name`` whose package has this sha256, or None (a push can skip work)."""
        check_name(name, "name")
        check_sha(sha256)
        with self._meta.tx(write=False) as db:
            return self._meta.find(db, name, sha256)

    # ------------------------------------------------------------------------------- packages

    def put_package(self, name: str, files: Union[Mapping[str, str], PackageDigest]) -> Tuple[str, str]:
        """Stores a package's files and returns ``(model_uri, sha256)``.

        ``files`` maps relative names (``"model.onnx"``, ``"golden/inputs.npz"``) to local paths,
        or is the ``digest_package(name, files)`` that a push already computed (no file is hashed
        twice). The package is content-addressed (see ``package_sha256``) and committed atomically;
        an identical package already stored is reused, never overwritten. Nothing is recorded in
        the metadata: pass the result to ``add_version``, or to ``discard_package`` if the push
        fails before that.
        """
        check_name(name, "name")
        digest = files if isinstance(files, PackageDigest) else digest_package(name, files)
        if digest.name != name:
            raise InvalidArgument(f"files: the digest was made for model {digest.name!r}, not {name!r}")
        sha = digest.sha256
        uri = self._artifacts.uri(name, sha)
        existing = self._artifacts.read_manifest(name, sha)
        if existing is not None:  # reuse it, never overwrite
            parse_manifest(existing, sha, f"model {name!r}: package {uri}")
        else:
            self._artifacts.put(name, sha, list(digest.entries), digest.manifest)
        return uri, sha

    def discard_package(self, name: str, sha256: str) -> bool:
        """Deletes a stored package that no version references (a push that failed before
        ``add_version``). Returns whether a package was deleted; referenced ones are kept."""
        check_name(name, "name")
        check_sha(sha256)
        return remove_unreferenced(self._meta, self._artifacts, name, sha256) is not None

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
        state is failed and it is never live. ``fallback_id`` (``"name[:version]"``) must pass
        ``check_fallback``. Retention then deletes this model's versions beyond ``keep_versions``.
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
        if fallback_id is not None:
            check_fallback_ref(name, None, fallback_id)  # the cheap part first, outside the lock
        with self._meta.tx(write=True) as db:
            existing = self._meta.find(db, name, sha256)
            if existing is not None:
                if live and not existing.is_live and existing.state != "failed":
                    self._meta.set_live(db, existing, "promote", "promote")
                return self._meta.row(db, name, existing.version)
            self._check_stored(name, sha256, model_uri)  # under the lock: gc cannot race it
            now = time.time()
            version = self._meta.next_version(db, name, now)
            make_live = live is True or (live is None and self._meta.live_row(db, name) is None)
            fb = None if fallback_id is None else self._check_fallback(db, name, version, fallback_id, make_live)
            self._meta.insert_version(db, name, version, model_uri, sha256, values, state or "staged", fb, now)
            record = self._meta.row(db, name, version)
            if make_live:
                self._meta.set_live(db, record, "promote", "add")
                record = self._meta.row(db, name, version)
            victims = self._meta.retention(db, name, self.keep_versions)
        remove_victims(self._meta, self._artifacts, name, victims, GcReport())
        return record

    def _check_stored(self, name: str, sha256: str, model_uri: str) -> None:
        """ArtifactMissing unless the package is committed; TamperedArtifact if its manifest is bad."""
        raw = self._artifacts.read_manifest(name, sha256)
        if raw is None:
            raise ArtifactMissing(f"model {name!r}: package {model_uri} is not stored (or gc "
                                  "deleted it); put_package it again")
        parse_manifest(raw, sha256, f"model {name!r}: package {model_uri}")

    def check_fallback(self, name: str, ref: str, version: Optional[int] = None,
                       field: str = "fallback_id") -> str:
        """The one fallback rule, for a push (``version`` None: the version not numbered yet) and
        for set_fallback alike: ``ref`` names an existing version of any model that did not fail
        to load (unpinned: a model that has a live version now), never the version itself (see
        ``check_fallback_ref``), and closes no cycle (``check_fallback_cycle``; a push is taken to
        become live when the model has no live version). Returns the normalised ``fallback_id``."""
        check_name(name, "name")
        with self._meta.tx(write=False) as db:
            live = version is None and self._meta.live_row(db, name) is None
            return self._check_fallback(db, name, version, ref, live, field)

    def _check_fallback(self, db, name: str, version: Optional[int], ref: str, becomes_live: bool = False,
                        field: str = "fallback_id") -> str:
        require = lambda n, v, f: self._meta.require(db, n, v, f)  # noqa: E731
        return check_fallback_target(name, version, ref, require, becomes_live, field)

    def promote(self, name: str, version: int) -> VersionRecord:
        """Makes ``version`` live; the previous live version becomes retired (rollback returns
        to it). Promoting the live version changes nothing; a failed version cannot be live."""
        check_name(name, "name")
        version = check_version(version)
        with self._meta.tx(write=True) as db:
            rec = self._meta.require(db, name, version)
            if not rec.is_live:
                self._meta.set_live(db, rec, "promote", "promote")
            return self._meta.row(db, name, version)

    def rollback(self, name: str) -> VersionRecord:
        """Makes the previous live version live again (the current one becomes retired) and
        returns it. Repeated rollbacks walk further back through the live history, skipping
        versions that were deleted or failed; FailedPrecondition if there is none."""
        check_name(name, "name")
        with self._meta.tx(write=True) as db:
            current = self._meta.require(db, name, None)
            for seq, version in self._meta.live_stack(db, name, current.version):
                target = self._meta.row(db, name, version)
                if target is not None and target.state != "failed":
                    self._meta.pop_live_history(db, name, seq)
                    self._meta.set_live(db, target, "rollback", "rollback")
                    return self._meta.row(db, name, version)
        raise FailedPrecondition(f"model {name!r}: no earlier live version to roll back to "
                                 f"(version {current.version} is live)")

    def set_fallback(self, name: str, version: Optional[int], to: Optional[str]) -> VersionRecord:
        """Sets (``to="name[:version]"``) or clears (``to=None``) the fallback of ``name:version``
        (the live version if None). Without a version the fallback follows that model's live
        version. The target must pass ``check_fallback`` (ModelNotFound / VersionNotFound naming
        fallback_id, FailedPrecondition for a failed target, InvalidArgument for itself or a cycle)."""
        check_name(name, "name")
        version = None if version is None else check_version(version)
        with self._meta.tx(write=True) as db:
            rec = self._meta.require(db, name, version)
            text = None if to is None else self._check_fallback(db, name, rec.version, to)
            self._meta.set_fallback_id(db, rec, text)
            return self._meta.row(db, name, rec.version)

    def set_state(self, name: str, version: int, state: str) -> VersionRecord:
        """Moves a version between staged, canary and retired (e.g. the canary controller). The
        live version changes only through promote/rollback, and failed only through record_load."""
        check_name(name, "name")
        version = check_version(version)
        if state not in ("staged", "canary", "retired"):
            hint = {"live": "use promote", "failed": "use record_load(failure=...)"}.get(
                state, "expected staged, canary or retired")
            raise InvalidArgument(f"state: cannot set {state!r}: {hint}")
        with self._meta.tx(write=True) as db:
            rec = self._meta.require(db, name, version)
            self._meta.move(db, rec, state, "set_state")
            return self._meta.row(db, name, version)

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
        with self._meta.tx(write=True) as db:
            rec = self._meta.require(db, name, version)
            if failure is not None and not rec.is_live:
                self._meta.move(db, rec, "failed", "record_load")
            elif failure is None and rec.state == "failed":
                self._meta.move(db, rec, "staged", "record_load")
            self._meta.update_load(db, rec, failure, load_s, fp)
            return self._meta.row(db, name, version)

    # ---------------------------------------------------------------------- retention and gc

    def gc(self, min_age_s: float = GC_MIN_AGE_S) -> GcReport:
        """Applies retention to every model, then deletes orphaned artifacts: packages that no
        version references (including uploads that never committed) and temp leftovers of
        interrupted pushes. Orphans younger than ``min_age_s`` are kept, since a push may be
        between put_package and add_version. Returns what was removed."""
        if isinstance(min_age_s, bool) or not isinstance(min_age_s, (int, float)) or not min_age_s >= 0:
            raise InvalidArgument(f"min_age_s: expected seconds >= 0, got {min_age_s!r}")
        return collect(self._meta, self._artifacts, self.keep_versions, min_age_s)

    # ---------------------------------------------------------------------------------- fetch

    def fetch(self, record: VersionRecord, dest_dir: Optional[str] = None) -> str:
        """Verifies a version's package and returns a local directory holding its files.

        Every file is hashed and checked against the manifest, and the manifest against the
        record's sha256; any mismatch raises TamperedArtifact, a missing package or file
        ArtifactMissing. A local repository's package is verified in place and its directory
        returned (``dest_dir`` is ignored). A remote one is downloaded into ``dest_dir`` (default:
        ``<metadata file>-cache/<name>/<sha256>``; with metadata on PostgreSQL, beside the default
        metadata file, ``default_metadata_path(url)``), keeping files already there that verify.
        """
        name, sha = check_name(record.name, "name"), check_sha(record.sha256)
        dest = None
        if self.is_remote:
            local = self.metadata_path if self._meta.dialect == "sqlite" else default_metadata_path(self.repository)
            dest = os.path.abspath(dest_dir or os.path.join(os.path.splitext(local)[0] + "-cache", name, sha))
        return self._artifacts.materialize(name, sha, record.where, dest)
