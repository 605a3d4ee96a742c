"""Registry operations that load models: push, load a stored version, seed the demo models.

Which repository a command uses: ``--repository URL_OR_DIR``, else the
environment variable ``INFERLINE_REPOSITORY``, else the default repository
``~/.inferline/repository`` (seeded with the demo models on first use; an
explicitly named repository starts empty).
"""

from __future__ import annotations

import os
from typing import Optional

from ..engine import Engine
from ..registry import Registry, VersionRecord, digest_package
from . import loader
from .package import load_package

ENV_REPOSITORY = "INFERLINE_REPOSITORY"


def default_repository() -> str:
    return os.path.join(os.path.expanduser("~"), ".inferline", "repository")


def open_registry(repository: Optional[str] = None) -> Registry:
    """Opens the chosen repository; the default one is seeded with the demo models on first use."""
    location = repository or os.environ.get(ENV_REPOSITORY) or None
    if location:
        return Registry.open(location)
    registry = Registry.open(default_repository())
    if not registry.models():
        seed_demo_models(registry)
    return registry


def seed_demo_models(registry: Registry) -> list:
    from ..demo_models import DEMO_MODELS, demo_package_path

    return [push(registry, demo_package_path(name)) for name in DEMO_MODELS]


def push(registry: Registry, path: str, *, name: Optional[str] = None, fallback: Optional[str] = None,
         live: Optional[bool] = None) -> VersionRecord:
    """Validates a package, loads it once, stores it immutably and records a version.

    Pushing identical content again returns the existing version. A push that fails
    leaves no version and no artifact behind.
    """
    package = load_package(path, name)
    try:
        return _push_package(registry, package, fallback, live)
    finally:
        package.discard_scratch()


def _push_package(registry: Registry, package, fallback: Optional[str], live: Optional[bool]) -> VersionRecord:
    """Checks the fallback (before the costly load), hashes the files once for both the identical-
    push lookup and the store, loads the package once, then stores it and records the version."""
    fallback_ref = fallback if fallback is not None else package.fallback
    if fallback_ref:
        registry.check_fallback(package.name, fallback_ref)  # the one rule; add_version checks again
    digest = digest_package(package.name, package.files)
    existing = registry.find(package.name, digest.sha256)
    if existing is not None:
        return registry.promote(existing.name, existing.version) if live and not existing.is_live else existing
    with Engine() as engine:  # load once: the signature, the golden set and the fingerprint must pass
        _, report = loader.load_into_engine(engine, package, version=1)
    model_uri, sha = registry.put_package(package.name, digest)
    try:
        return registry.add_version(
            package.name, sha, model_uri, runtime_env=report.runtime_env, config=package.data,
            labels=package.labels, fallback_id=fallback_ref or None, model_load_time_s=report.model_load_time_s,
            fingerprint=report.fingerprint, live=live)
    except BaseException:
        registry.discard_package(package.name, sha)
        raise


def load_version(engine: Engine, registry: Registry, record: VersionRecord, dest_dir: Optional[str] = None):
    """Fetches (verifying sha256) and loads a stored version; records the load or its failure.

    Returns (handle, LoadReport).
    """
    try:
        root = registry.fetch(record, dest_dir)  # verifies every file's sha256
        package = load_package(root, record.name)
        handle, report = loader.load_into_engine(engine, package, record.version, root=root)
    except Exception as e:
        registry.record_load(record.name, record.version, failure=str(e))
        raise
    registry.record_load(record.name, record.version, model_load_time_s=report.model_load_time_s,
                         fingerprint=report.fingerprint)
    return handle, report
