"""Model registry (storage only): immutable, versioned model packages with live/rollback/fallback
metadata, version states and their one transition table, artifacts and retention, and the storage
of canary rollouts and shadows (``Registry.rollouts``).

``Registry.open(repository)`` is the entry point; see ``store`` for the layout and the rules. This
package imports nothing above it (no engine, backends or model lifecycle).
"""

from ._records import check_fallback_ref
from ._states import STATES, TRANSITIONS
from .store import (ArtifactMissing, GcReport, PackageDigest, Registry, Rollout, RolloutEvent, RolloutStore,
                    Shadow, TamperedArtifact, VersionNotFound, VersionRecord, check_name, default_metadata_path,
                    digest_package, package_sha256, parse_ref)

__all__ = [
    "ArtifactMissing", "GcReport", "PackageDigest", "Registry", "Rollout", "RolloutEvent", "RolloutStore", "STATES",
    "Shadow", "TRANSITIONS", "TamperedArtifact", "VersionNotFound", "VersionRecord", "check_fallback_ref",
    "check_name", "default_metadata_path", "digest_package", "package_sha256", "parse_ref",
]
