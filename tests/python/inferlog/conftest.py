"""Fixtures of the inference-log tests: a real moto S3 server (the registry tests' fixtures, reused),
and tmpfs mounts for a full or read-only log directory (skipped where mounting is not permitted)."""

import contextlib
import subprocess

import pytest

from registry.test_store import bucket, moto_endpoint, s3_env  # noqa: F401  (fixtures)


@pytest.fixture
def tmpfs():
    """tmpfs(path, options): a context manager mounting a tmpfs (skips the test where not permitted)."""
    return _tmpfs


@contextlib.contextmanager
def _tmpfs(path, options: str):
    """A tmpfs mounted at `path` with `options` (e.g. "size=64k", "ro") for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
