"""Retention and garbage collection: which packages may be deleted, and deleting them.

A model keeps its newest ``keep`` versions, plus its live and canary versions and any version
that a ``fallback_id`` pins (``Metadata.retention`` picks the rest and deletes their metadata).
A package is deleted only when no version references it, checked under the metadata write lock
so that ``add_version`` (which checks the package under the same lock) cannot race it.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

from ..errors import Unavailable
from ._artifacts import TMP_PREFIX, ArtifactStore
from ._metadata import Metadata
from ._records import SHA_RE, GcReport

log = logging.getLogger("inferline.registry.store")


def remove_unreferenced(meta: Metadata, artifacts: ArtifactStore, name: str, sha256: str) -> Optional[str]:
    """Deletes the package unless a version references it; the check and the deletion happen
    under the write lock, so add_version cannot record it meanwhile. Returns its URI if deleted."""
    with meta.tx(write=True) as db:
        if meta.referenced(db, name, sha256):
            return None
        if not artifacts.remove(artifacts.path(name, sha256)):
            return None
        return artifacts.uri(name, sha256)


def remove_victims(meta: Metadata, artifacts: ArtifactStore, name: str, victims: List[Tuple[int, str]],
                   report: GcReport) -> None:
    """Deletes the packages of versions that retention removed (best effort: a storage error
    leaves an orphan for gc)."""
    for version, sha in victims:
        report.versions.append(f"{name}:{version}")
        try:
            uri = remove_unreferenced(meta, artifacts, name, sha)
        except Unavailable as e:
            log.warning("retention: could not delete the package of %s:%s: %s", name, version, e)
            continue
        if uri is not None:
            report.packages.append(uri)


def collect(meta: Metadata, artifacts: ArtifactStore, keep: int, min_age_s: float) -> GcReport:
    """Applies retention to every model, then deletes orphans older than ``min_age_s``:
    packages that no version references and temp leftovers of interrupted pushes."""
    report = GcReport()
    with meta.tx(write=True) as db:
        names = meta.model_names(db)
        victims = {name: meta.retention(db, name, keep) for name in names}
    for name in names:
        remove_victims(meta, artifacts, name, victims[name], report)
    with meta.tx(write=False) as db:
        referenced = meta.packages(db)
    for name, entry, path in artifacts.scan():
        _collect_entry(meta, artifacts, (name, entry, path), referenced, min_age_s, report)
    return report


def _collect_entry(meta: Metadata, artifacts: ArtifactStore, scanned: Tuple[str, str, str],
                   referenced: set, min_age_s: float, report: GcReport) -> None:
    """gc of one scanned entry: a temp leftover or an unreferenced package, once old enough."""
    name, entry, path = scanned
    temp = entry.startswith(TMP_PREFIX)
    if not temp and (not SHA_RE.fullmatch(entry) or (name, entry) in referenced):
        return
    if min_age_s > 0 and artifacts.age_s(path) < min_age_s:
        return
    if temp:
        if artifacts.remove(path):
            report.temp.append(path)
        return
    uri = remove_unreferenced(meta, artifacts, name, entry)
    if uri is not None:
        report.packages.append(uri)
