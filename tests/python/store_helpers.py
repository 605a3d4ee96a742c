"""Helpers of the registry storage tests: package files, a push through the store API, raw SQL."""

import contextlib
import json
import sqlite3
import uuid
from pathlib import Path

ENV = {"backend": "onnxruntime", "onnxruntime": "1.17.0", "python": "3.11"}

try:
    import psycopg
except ImportError:  # the PostgreSQL tests skip without it
    psycopg = None

INTEGRITY_ERRORS = (sqlite3.IntegrityError,) + ((psycopg.IntegrityError,) if psycopg else ())
"""What the database raises past the registry when a constraint or trigger refuses a change."""


def make_files(root, content: bytes, extra: bytes = b"") -> dict:
    """A small package in a fresh directory under root: model.onnx, config.json, golden/inputs.npz."""
    d = Path(root) / uuid.uuid4().hex
    (d / "golden").mkdir(parents=True)
    (d / "model.onnx").write_bytes(content)
    (d / "config.json").write_text(json.dumps({"name": "m", "backend": "onnxruntime"}))
    (d / "golden" / "inputs.npz").write_bytes(b"golden" + extra)
    return {"model.onnx": str(d / "model.onnx"), "config.json": str(d / "config.json"),
            "golden/inputs.npz": str(d / "golden" / "inputs.npz")}


def push(reg, root, name, content: bytes, **kw):
    uri, sha = reg.put_package(name, make_files(root, content))
    kw.setdefault("runtime_env", ENV)
    return reg.add_version(name, sha, uri, **kw)


def push_worker(repo, metadata, name, contents, barrier, out):
    """A process that opens the registry at `repo` (metadata file or URL `metadata`), waits at
    `barrier` and pushes each of `contents` as a version of `name`: puts the sorted versions it
    got on `out`, or the error's text (the test fails on it)."""
    import tempfile

    from inferline.registry import Registry

    try:
        reg = Registry.open(repo, metadata, keep_versions=100)
        root = tempfile.mkdtemp()
        barrier.wait(60)
        out.put(sorted(push(reg, root, name, c.encode()).version for c in contents))
    except BaseException as e:  # reported to the test, which fails on it
        out.put(f"{type(e).__name__}: {e}")


def versions(reg, name):
    return [r.version for r in reg.list(name)]


class _Qmark:
    """A psycopg connection that takes ``?`` placeholders, as sqlite3 does."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql, params=()):
        return self._conn.execute(sql.replace("?", "%s"), params or None)


@contextlib.contextmanager
def raw_sql(reg):
    """A plain autocommit connection to ``reg``'s metadata that bypasses the registry (SQLite file or
    PostgreSQL database), with ``execute(sql, params)`` and ``?`` placeholders."""
    if reg._meta.dialect == "sqlite":
        db = sqlite3.connect(reg.metadata_path, isolation_level=None)
    else:
        db = psycopg.connect(reg._meta.target, autocommit=True)
    try:
        yield db if reg._meta.dialect == "sqlite" else _Qmark(db)
    finally:
        db.close()
