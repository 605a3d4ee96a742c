"""Where a repository lives: a local directory, or artifacts under a URL with local metadata.

``locate`` turns what a user names (a directory, ``file://DIR``, ``s3://bucket/prefix``, any
fsspec URL) into the repository's canonical key, its artifact store and its metadata (a file, or a
``postgresql://`` URL); the rules are in ``Registry.open``.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Mapping, Optional, Tuple

from ..errors import InvalidArgument, Unavailable
from ._artifacts import BUCKET_PROTOCOLS, ArtifactStore, cause
from ._postgres import is_postgres_url

_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.S)


def default_metadata_path(url: str) -> str:
    """Where a remote repository's metadata lives by default: one file per repository URL."""
    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~"), ".inferline", "registries", f"{key}.db")


def locate(repository: Any, metadata_path: Optional[str],
           storage_options: Optional[Mapping[str, Any]]) -> Tuple[str, ArtifactStore, str]:
    """(repository key, artifact store, absolute metadata path or PostgreSQL URL) for
    ``Registry.open``'s arguments."""
    if not isinstance(repository, str) or not repository.strip():
        raise InvalidArgument(f"repository: expected a directory or URL, got {repository!r}")
    m = _URL_RE.fullmatch(repository)
    protocol = m.group(1).lower() if m else None
    env = os.environ.get("INFERLINE_REGISTRY_DB")
    if protocol in (None, "file", "local"):
        key, artifacts = _local_store(repository, m.group(2) if m else repository)
        shared = env if is_postgres_url(env) else None  # a file in the env is for remote repositories
        db = metadata_path or shared or os.path.join(key, "registry.db")
    else:
        if not m.group(2).strip("/"):
            what = "BUCKET[/PREFIX]" if protocol in BUCKET_PROTOCOLS else "PATH"
            raise InvalidArgument(f"repository {repository!r}: expected {protocol}://{what}")
        key = repository.rstrip("/")
        artifacts = ArtifactStore.remote(key, protocol, storage_options)
        db = metadata_path or env or default_metadata_path(key)
    if is_postgres_url(db):
        return key, artifacts, db
    return key, artifacts, os.path.abspath(os.path.expanduser(db))


def _local_store(repository: str, path: str) -> Tuple[str, ArtifactStore]:
    """(absolute root, artifact store) of a local repository directory, created if missing."""
    root = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(root) and not os.path.isdir(root):
        raise InvalidArgument(f"repository {repository!r}: {root} is not a directory")
    try:
        os.makedirs(os.path.join(root, "artifacts"), exist_ok=True)
    except OSError as e:
        raise Unavailable(f"repository {repository!r}: cannot create it: {cause(e)}") from None
    return root, ArtifactStore.local_dir(os.path.join(root, "artifacts"))
