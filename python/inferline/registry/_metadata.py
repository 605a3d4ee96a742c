"""SQL access for the registry: the connection, the schema, transactions, rows <-> records.

``Metadata`` owns one connection: a SQLite file in WAL mode (``SqliteConnection``), or a
PostgreSQL database named by a ``postgresql://`` URL (``_postgres.PostgresConnection``, the same
methods). The queries are written once, in the SQL both understand (``?`` placeholders, which the
PostgreSQL connection translates). Every call of the registry runs in one ``tx``: one writer at a
time across processes and machines for writes (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an
advisory lock), waiting up to ``BUSY_TIMEOUT_S``, a snapshot for reads. Database errors become
inferline errors here and nowhere else (busy or unreachable: Unavailable; a broken constraint:
FailedPrecondition). The query helpers take the transaction's connection (``db``) so that a caller
composes several of them atomically; every state change goes through ``move`` (the checked
transition table).
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from typing import Iterator, List, Optional, Tuple

from ..errors import FailedPrecondition, InferlineError, ModelNotFound, Unavailable
from ._artifacts import cause
from ._postgres import PostgresConnection, is_postgres_url
from ._records import (COLUMNS, MIGRATIONS, SCHEMA, SCHEMA_VERSION, VersionNotFound, VersionRecord,
                       record_from_row)
from ._states import check_transition

BUSY_TIMEOUT_S = 10.0
"""How long a writer waits for another writer's transaction before giving up (Unavailable)."""


def connect(path: str) -> sqlite3.Connection:
    """A WAL-mode connection to the metadata file at ``path`` (created if missing).

    Switching a new file to WAL takes an exclusive lock, and SQLite can report "database is
    locked" for it at once, without its busy handler, while other processes open the same new
    file: that is retried for up to the busy timeout.
    """
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


class SqliteConnection:
    """The SQLite dialect: one WAL-mode connection; ``begin`` hands out the sqlite3 connection
    itself (it has ``execute``, ``executemany`` and ``IntegrityError``)."""

    dialect = "sqlite"
    errors = (sqlite3.OperationalError, sqlite3.IntegrityError)

    def __init__(self, path: str):
        self.where = path
        self._db = connect(path)

    def close(self) -> None:
        self._db.close()

    def begin(self, write: bool, busy_timeout_s: float) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        return self._db

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def schema_version(self, db) -> int:
        return db.execute("PRAGMA user_version").fetchone()[0]

    def set_schema_version(self, db, version: int) -> None:
        db.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement: str) -> List[str]:
        return [statement]

    def error(self, e: BaseException) -> Optional[InferlineError]:
        if isinstance(e, sqlite3.IntegrityError):
            return FailedPrecondition(f"registry metadata {self.where}: {e}")
        busy = " (another writer held it longer than the busy timeout)" if "locked" in str(e) else ""
        return Unavailable(f"registry metadata {self.where}: {cause(e)}{busy}")


class Metadata:
    """The metadata of one repository: transactions and the queries the registry composes.

    Locking: ``_lock`` serialises this process's threads on the one connection (held for a whole
    ``tx``); the database orders processes. Methods that take ``db`` require a ``tx``.
    """

    def __init__(self, target: str, repository: str, check_owner: bool):
        """``target``: a SQLite file path or a ``postgresql://`` URL. ``check_owner``: refuse
        metadata made for another repository (remote repositories; a local directory may be moved
        with its metadata inside)."""
        self.repository = repository
        self._lock = threading.RLock()
        self._conn = PostgresConnection(target) if is_postgres_url(target) else SqliteConnection(target)
        self.path = self._conn.where
        """The metadata file, or the PostgreSQL URL with its password masked (for messages)."""
        self.target = target
        """What was opened: the file path or the full URL."""
        try:
            self._init_schema(check_owner)
        except BaseException:
            self._conn.close()
            raise

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._conn.dialect

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _sql_errors(self) -> Iterator[None]:
        try:
            yield
        except self._conn.errors as e:
            mapped = self._conn.error(e)
            if mapped is None:
                raise
            raise mapped from None

    @contextlib.contextmanager
    def tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction: one writer at a time for writes, a snapshot for reads. Takes
        ``_lock`` for its whole length."""
        with self._lock, self._sql_errors():
            db = self._conn.begin(write, BUSY_TIMEOUT_S)
            try:
                yield db
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

    def _init_schema(self, check_owner: bool) -> None:
        """Creates the schema in a new database, migrates an older one (``MIGRATIONS``, all steps
        in one write transaction), refuses a newer schema or another repository's metadata."""
        conn = self._conn
        with self.tx(write=False) as db:
            version = conn.schema_version(db)
        if version < SCHEMA_VERSION:
            with self.tx(write=True) as db:  # another process may have done it meanwhile
                version = conn.schema_version(db)
                if version == 0:
                    for stmt in SCHEMA:
                        for part in conn.ddl(stmt):
                            db.execute(part)
                    db.execute("INSERT INTO meta VALUES ('repository', ?)", (self.repository,))
                elif version < SCHEMA_VERSION:
                    for step in range(version + 1, SCHEMA_VERSION + 1):
                        for stmt in MIGRATIONS[step]:
                            for part in conn.ddl(stmt):
                                db.execute(part)
                    conn.set_schema_version(db, SCHEMA_VERSION)
                version = conn.schema_version(db)
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(f"registry metadata {self.path}: schema version {version} "
                                     f"is newer than this inferline's ({SCHEMA_VERSION}); upgrade inferline")
        with self.tx(write=False) as db:
            owner = db.execute("SELECT value FROM meta WHERE key = 'repository'").fetchone()
        if check_owner and owner and owner[0] != self.repository:
            raise FailedPrecondition(f"registry metadata {self.path} belongs to repository "
                                     f"{owner[0]!r}, not {self.repository!r}; pass another metadata_path")

    # ------------------------------------------------------------------------------ reads

    def row(self, db, name: str, version: int) -> Optional[VersionRecord]:
        row = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? AND version = ?",
                         (name, version)).fetchone()
        return record_from_row(row) if row else None

    def live_row(self, db, name: str) -> Optional[VersionRecord]:
        row = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? AND is_live = 1",
                         (name,)).fetchone()
        return record_from_row(row) if row else None

    def find(self, db, name: str, sha256: str) -> Optional[VersionRecord]:
        row = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? AND sha256 = ?",
                         (name, sha256)).fetchone()
        return record_from_row(row) if row else None

    def rows(self, db, name: Optional[str] = None) -> List[VersionRecord]:
        """Every version (of ``name`` if given), ordered by name then version."""
        if name is None:
            rows = db.execute(f"SELECT {COLUMNS} FROM versions ORDER BY name, version").fetchall()
        else:
            rows = db.execute(f"SELECT {COLUMNS} FROM versions WHERE name = ? ORDER BY version",
                              (name,)).fetchall()
        return [record_from_row(r) for r in rows]

    def require(self, db, name: str, version: Optional[int], field: str = "") -> VersionRecord:
        """The version (the live one if None), else ModelNotFound / VersionNotFound."""
        rec = self.live_row(db, name) if version is None else self.row(db, name, version)
        if rec is not None:
            return rec
        prefix = f"{field}: " if field else ""
        if not db.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
            raise ModelNotFound(f"{prefix}model {name!r} not found in repository {self.repository!r}")
        if version is None:
            raise VersionNotFound(f"{prefix}model {name!r} has no live version")
        raise VersionNotFound(f"{prefix}model {name!r} version {version} not found "
                              f"in repository {self.repository!r}")

    def live_stack(self, db, name: str, current: int) -> List[Tuple[int, int]]:
        """(seq, version) of the active live history below ``current``, newest first."""
        return db.execute("SELECT seq, version FROM live_history WHERE name = ? AND active = 1 "
                          "AND version != ? ORDER BY seq DESC", (name, current)).fetchall()

    # ----------------------------------------------------------------------------- writes

    def next_version(self, db, name: str, now: float) -> int:
        """Reserves the model's next version number (consumed only if the transaction commits)."""
        db.execute("INSERT INTO models (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, now))
        db.execute("UPDATE models SET last_version = last_version + 1 WHERE name = ?", (name,))
        return db.execute("SELECT last_version FROM models WHERE name = ?", (name,)).fetchone()[0]

    def insert_version(self, db, name: str, version: int, model_uri: str, sha256: str,
                       values: tuple, state: str, fallback_id: Optional[str], now: float) -> None:
        """``values``: runtime_env, config, labels, model_load_time_s, fingerprint, failure."""
        db.execute("INSERT INTO versions (name, version, model_uri, sha256, runtime_env, config, "
                   "labels, model_load_time_s, fingerprint, failure, state, fallback_id, created_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (name, version, model_uri, sha256) + tuple(values) + (state, fallback_id, now))

    def move(self, db, rec: VersionRecord, to: str, operation: str) -> None:
        """Changes the state of ``rec`` to ``to`` after checking the transition table."""
        check_transition(rec, to, operation)
        db.execute("UPDATE versions SET state = ?, is_live = ? WHERE name = ? AND version = ?",
                   (to, int(to == "live"), rec.name, rec.version))

    def set_live(self, db, rec: VersionRecord, operation: str, action: str) -> None:
        """Makes ``rec`` the live version (the previous live becomes retired), records it in the
        live history (``action``: add, promote or rollback)."""
        check_transition(rec, "live", operation)
        old = self.live_row(db, rec.name)
        if old is not None and old.version != rec.version:
            self.move(db, old, "retired", operation)
        self.move(db, rec, "live", operation)
        db.execute("INSERT INTO live_history (name, version, action, at) VALUES (?, ?, ?, ?)",
                   (rec.name, rec.version, action, time.time()))

    def pop_live_history(self, db, name: str, seq: int) -> None:
        """Deactivates the live history from ``seq`` on (a rollback consumed it)."""
        db.execute("UPDATE live_history SET active = 0 WHERE name = ? AND seq >= ?", (name, seq))

    def update_load(self, db, rec: VersionRecord, failure: Optional[str], load_s: Optional[float],
                    fingerprint: Optional[str]) -> None:
        """Stores a load's outcome (None keeps the stored time and fingerprint)."""
        db.execute("UPDATE versions SET failure = ?, model_load_time_s = COALESCE(?, model_load_time_s), "
                   "fingerprint = COALESCE(?, fingerprint) WHERE name = ? AND version = ?",
                   (failure, load_s, fingerprint, rec.name, rec.version))

    def set_fallback_id(self, db, rec: VersionRecord, fallback_id: Optional[str]) -> None:
        db.execute("UPDATE versions SET fallback_id = ? WHERE name = ? AND version = ?",
                   (fallback_id, rec.name, rec.version))

    # -------------------------------------------------------------------------- retention

    def retention(self, db, name: str, keep: int) -> List[Tuple[int, str]]:
        """Deletes the metadata of ``name``'s versions beyond the newest ``keep``, except live,
        canary and fallback targets and the versions of an active rollout or a running shadow;
        returns (version, sha256) of the deleted ones."""
        rows = db.execute("SELECT version, sha256, state FROM versions WHERE name = ? "
                          "ORDER BY version DESC", (name,)).fetchall()
        if len(rows) <= keep:
            return []
        pinned = {r[0] for r in db.execute("SELECT DISTINCT fallback_id FROM versions "
                                           "WHERE fallback_id IS NOT NULL")}
        in_use = {r[0] for r in db.execute(
            "SELECT version FROM shadows WHERE name = ? AND stopped_at IS NULL UNION "
            "SELECT version FROM rollouts WHERE name = ? AND status = 'canary'", (name, name))}
        victims = [(v, sha) for v, sha, state in rows[keep:]
                   if state not in ("live", "canary") and f"{name}:{v}" not in pinned and v not in in_use]
        if victims:
            db.executemany("DELETE FROM versions WHERE name = ? AND version = ?",
                           [(name, v) for v, _ in victims])
        return victims

    def referenced(self, db, name: str, sha256: str) -> bool:
        """Whether some version of ``name`` records the package ``sha256``."""
        return db.execute("SELECT 1 FROM versions WHERE name = ? AND sha256 = ?",
                          (name, sha256)).fetchone() is not None

    def model_names(self, db) -> List[str]:
        return [r[0] for r in db.execute("SELECT name FROM models ORDER BY name")]

    def packages(self, db) -> set:
        """{(name, sha256)} of every package some version references."""
        return set(db.execute("SELECT name, sha256 FROM versions").fetchall())
