"""Model registry: immutable, versioned model packages with live/rollback/fallback metadata.

``Registry.open(repository)`` is the entry point; see ``store`` for the layout and the rules.
"""

from .store import (ArtifactMissing, GcReport, Registry, TamperedArtifact, VersionNotFound,
                    VersionRecord, check_name, default_metadata_path, package_sha256, parse_ref)

__all__ = [
    "ArtifactMissing", "GcReport", "Registry", "TamperedArtifact", "VersionNotFound",
    "VersionRecord", "check_name", "default_metadata_path", "package_sha256", "parse_ref",
]
