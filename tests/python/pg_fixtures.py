"""A real PostgreSQL server for the tests: a private cluster on 127.0.0.1, one per test session.

``pg_server`` (import it into a conftest) runs ``initdb`` and ``pg_ctl`` from Debian's
``postgresql`` package (``/usr/lib/postgresql/<major>/bin``, or ``$INFERLINE_PG_BIN``, or
``initdb`` on PATH) with its data in a fresh temp directory, a free port, password (scram) auth,
listening on 127.0.0.1 only, and stops it at the end. PostgreSQL refuses to run as root: as root
the cluster runs as the ``postgres`` system user that the package creates. Without the server or
psycopg the tests that need it skip on a developer's machine and fail under CI (env CI set).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from typing import List, Optional

import pytest

USER = "inferline"
PASSWORD = "pg-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Optional[str]:
    """The directory holding initdb and pg_ctl, or None."""
    def major(d: str) -> int:
        m = re.search(r"/postgresql/(\d+)/", d)
        return int(m.group(1)) if m else 0

    candidates = [os.environ.get("INFERLINE_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    on_path = shutil.which("initdb")
    candidates.append(os.path.dirname(on_path) if on_path else "")
    for d in candidates:
        if d and all(os.access(os.path.join(d, exe), os.X_OK) for exe in ("initdb", "pg_ctl")):
            return d
    return None


def require_postgres() -> str:
    """The server's bin directory; skips the test where PostgreSQL or psycopg is missing (under CI
    fails it)."""
    bindir = pg_bindir()
    missing = []
    if bindir is None:
        missing.append("the PostgreSQL server (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append("psycopg (pip install 'inferline[postgres]')")
    if os.name == "posix" and os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing.append("the 'postgres' system user to run the server as (running as root)")
    if missing:
        message = "PostgreSQL tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + " -- required in CI")
        pytest.skip(message)
    return bindir


class PgServer:
    """A running private cluster: ``url(dbname)``, ``create_database()``, ``drop_database(name)``."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="inferline-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = free_port()
        self._as: List[str] = []
        if os.geteuid() == 0:  # the server refuses root: run it as the package's postgres user
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
            self._owner = (pw.pw_uid, pw.pw_gid)
        else:
            self._owner = None
        self._admin = None

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = self._as + [os.path.join(self.bindir, argv[0]), *argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = open(self.log).read()[-4000:] if os.path.exists(self.log) else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")

    def start(self) -> "PgServer":
        pwfile = os.path.join(self.root, "pwfile")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self._owner:
            os.chown(pwfile, *self._owner)
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start")
        import psycopg

        self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        return self

    def url(self, dbname: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server on 127.0.0.1 for the whole session (see the module docstring)."""
    server = PgServer(require_postgres())
    try:
        server.start()
    except BaseException:
        try:
            server.stop()
        except Exception:
            shutil.rmtree(server.root, ignore_errors=True)
        raise
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on ``pg_server`` (dropped after the test)."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)
