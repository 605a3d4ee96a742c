"""Registry metadata on a real PostgreSQL server (``pg_fixtures``): what only PostgreSQL has.

The registry's behaviour (the other test files) runs on both backends through the ``reg`` and
``metadata`` fixtures; here: processes racing on one database, the immutability trigger past the
registry, the write lock's timeout, a lost connection, an unreachable server, the schema version
and owner, the ``inferline models`` CLI with local artifacts and metadata on PostgreSQL, and the
error without psycopg.
"""

import multiprocessing as mp
import sys
import time
import uuid

import pytest

from inferline import errors
from inferline.cli import main
from inferline.demo_models import demo_package_path
from inferline.registry import Registry, _metadata, _postgres

from pg_fixtures import PASSWORD, free_port, require_postgres
from store_helpers import push, push_worker, versions

try:
    import psycopg
except ImportError:  # the tests that need it skip (fail under CI) through pg_url / require_postgres
    psycopg = None


# -------------------------------------------------------------------- several processes

def _run_workers(target, args_list, timeout_s=120):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(args_list)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for args in args_list]
    for p in procs:
        p.start()
    results = [out.get(timeout=timeout_s) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def test_processes_racing_to_publish_get_distinct_versions_and_one_version_per_package(pg_url, tmp_path):
    repo = str(tmp_path / "repo")  # artifacts shared as a bucket would be; metadata in one database
    jobs = [(repo, pg_url, "m", [f"p{i}-{j}" for j in range(3)]) for i in range(4)]
    jobs += [(repo, pg_url, "same", ["identical"])] * 3  # the same package, published three times at once
    results = _run_workers(push_worker, jobs)
    assert not [r for r in results if isinstance(r, str)], results
    assert sorted(v for r in results if len(r) == 3 for v in r) == list(range(1, 13))
    assert [r for r in results if len(r) == 1] == [[1], [1], [1]]  # exactly one version was made
    with Registry.open(repo, pg_url, keep_versions=100) as reg:
        assert versions(reg, "m") == list(range(1, 13)) and versions(reg, "same") == [1]
        assert [r.version for r in reg.list("m") if r.is_live] == [1]


def _open_worker(repo, url, barrier, out):
    try:
        barrier.wait(60)
        with Registry.open(repo, url) as reg:
            out.put(reg.list())
    except BaseException as e:
        out.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_new_database_at_once_create_the_schema_once(pg_url, tmp_path):
    results = _run_workers(_open_worker, [(str(tmp_path / "repo"), pg_url)] * 6)
    assert results == [[]] * 6
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT value FROM meta ORDER BY key").fetchall() == [(str(tmp_path / "repo"),), ("2",)]


def _lease_worker(repo, url, holder, barrier, out):
    try:
        reg = Registry.open(repo, url)
        barrier.wait(60)
        out.put((holder, reg.rollouts.acquire_lease("controller:m", holder, ttl_s=60)))
    except BaseException as e:
        out.put((holder, f"{type(e).__name__}: {e}"))


def test_processes_racing_for_one_lease_exactly_one_wins(pg_url, tmp_path):
    repo = str(tmp_path / "repo")
    Registry.open(repo, pg_url).close()  # the schema exists before the race
    results = dict(_run_workers(_lease_worker, [(repo, pg_url, f"w{i}") for i in range(4)]))
    assert sorted(map(str, results.values())) == ["False", "False", "False", "True"], results
    winner = next(h for h, won in results.items() if won is True)
    with Registry.open(repo, pg_url) as reg:
        holder, expires_at = reg.rollouts.lease("controller:m")
        assert holder == winner and expires_at > time.time() + 30


# ---------------------------------------------------------------------- the database's rules

def test_the_trigger_refuses_changing_a_published_digest_even_through_raw_sql(pg_url, tmp_path):
    with Registry.open(str(tmp_path / "repo"), pg_url) as reg:
        rec = push(reg, tmp_path / "src", "m", b"weights")
    with psycopg.connect(pg_url, autocommit=True) as db:
        with pytest.raises(psycopg.IntegrityError, match="sha256, .*are immutable") as e:
            db.execute("UPDATE versions SET sha256 = %s WHERE name = 'm'", ("0" * 64,))
        assert e.value.sqlstate == "23000"
        with pytest.raises(psycopg.IntegrityError, match="immutable"):
            db.execute("UPDATE versions SET model_uri = model_uri WHERE name = 'm'")  # named, even unchanged
        db.execute("UPDATE versions SET fallback_id = NULL, model_load_time_s = 1.5 WHERE name = 'm'")  # mutable
        assert db.execute("SELECT sha256 FROM versions").fetchall() == [(rec.sha256,)]
        with pytest.raises(psycopg.IntegrityError, match="versions_one_live"):
            db.execute("INSERT INTO versions (name, version, model_uri, sha256, runtime_env, config, labels, "
                       "state, is_live, created_at) VALUES ('m', 2, 'u', 'x', '{}', '{}', '{}', 'live', 1, 0)")
    with Registry.open(str(tmp_path / "repo"), pg_url) as reg:
        assert reg.get("m").sha256 == rec.sha256 and reg.get("m").model_load_time_s == 1.5


def test_a_busy_writer_gives_unavailable_and_readers_go_on(pg_url, tmp_path, monkeypatch):
    monkeypatch.setattr(_metadata, "BUSY_TIMEOUT_S", 0.3)
    with Registry.open(str(tmp_path / "repo"), pg_url) as reg:
        push(reg, tmp_path / "src", "m", b"1")
        with psycopg.connect(pg_url) as holder:  # another machine's writer, in the middle of a transaction
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (_postgres.LOCK_KEY,))
            assert reg.get("m").version == 1  # readers never wait for the writer
            start = time.monotonic()
            with pytest.raises(errors.Unavailable, match=r"registry metadata postgresql://inferline:\*\*\*@.*"
                                                          r"longer than the busy timeout"):
                reg.promote("m", 1)
            assert time.monotonic() - start < 5
        assert reg.promote("m", 1).is_live  # the holder committed: the registry's connection goes on


def test_a_lost_connection_is_unavailable_then_reconnects(pg_url, tmp_path):
    with Registry.open(str(tmp_path / "repo"), pg_url) as reg:
        push(reg, tmp_path / "src", "m", b"1")
        pid = reg._meta._conn._conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        try:
            reg.list()
        except errors.Unavailable as e:  # the call that finds the connection gone
            assert "registry metadata postgresql://inferline:***@" in str(e) and PASSWORD not in str(e)
        assert versions(reg, "m") == [1]  # the next one reconnects


def test_an_unreachable_server_is_unavailable_quickly_with_the_password_masked(tmp_path):
    require_postgres()
    url = f"postgresql://inferline:{PASSWORD}@127.0.0.1:{free_port()}/registry"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(errors.Unavailable) as e:
        Registry.open(str(tmp_path / "repo"), url)
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert message.startswith(f"registry metadata postgresql://inferline:***@127.0.0.1:{url.split(':')[3]}")
    assert "cannot connect" in message and PASSWORD not in message
    assert e.value.grpc_code == "UNAVAILABLE"
    for bad in (f"postgresql://inferline:{PASSWORD}@127.0.0.1:notaport/db", f"postgresql://u:{PASSWORD}@[::1/db"):
        with pytest.raises((errors.Unavailable, errors.InvalidArgument), match=r"registry metadata postgresql://"
                                                                                r"\w+:\*\*\*@") as e:
            Registry.open(str(tmp_path / "repo"), bad)
        assert PASSWORD not in str(e.value)


def test_mask_url_hides_passwords_only():
    assert _postgres.mask_url("postgres://u:p%40ss@db.internal:5433/reg?sslmode=require") == \
        "postgres://u:***@db.internal:5433/reg?sslmode=require"
    assert _postgres.mask_url("postgresql://u@h/db?password=x&application_name=a") == \
        "postgresql://u@h/db?password=***&application_name=a"
    assert _postgres.mask_url("postgresql://h/db") == "postgresql://h/db"
    assert _postgres.mask_url("postgresql://u:p:q@[::1/db") == "postgresql://u:***@[::1/db"  # malformed too
    assert _postgres.is_postgres_url("POSTGRES://h/db") and not _postgres.is_postgres_url("/tmp/postgres.db")


def test_schema_version_and_owner_are_checked(pg_url, tmp_path):
    url = f"memory://inferline-test-{uuid.uuid4().hex}/repo"
    with Registry.open(url, pg_url) as reg:
        assert reg.is_remote and reg.metadata_path == pg_url.replace(PASSWORD, "***")
        assert PASSWORD not in repr(reg)
        push(reg, tmp_path / "src", "m", b"remote")
    with pytest.raises(errors.FailedPrecondition, match=r"postgresql://inferline:\*\*\*@.* belongs to repository"):
        Registry.open(url + "-other", pg_url)
    with psycopg.connect(pg_url, autocommit=True) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(errors.FailedPrecondition, match="schema version 3 is newer than this inferline's"):
        Registry.open(url, pg_url)


def test_text_sorts_byte_wise_as_in_sqlite(reg, src):
    for name in ("b", "B", "a", "A_1", "a-2"):
        push(reg, src, name, name.encode())
    assert reg.models() == sorted(["b", "B", "a", "A_1", "a-2"]) == ["A_1", "B", "a", "a-2", "b"]


def test_without_psycopg_a_postgres_url_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(errors.FailedPrecondition, match=r"pip install 'inferline\[postgres\]'"):
        Registry.open(str(tmp_path / "repo"), "postgresql://u:p@127.0.0.1:1/db")


# ----------------------------------------------------------------------------------- the CLI

def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_push_and_list_with_local_artifacts_and_metadata_on_postgres(pg_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("INFERLINE_REGISTRY_DB", pg_url)
    repo = str(tmp_path / "repo")
    code, out, err = cli(capsys, "models", "push", demo_package_path("digits-logreg"), "--repository", repo)
    assert (code, out) == (0, "digits-logreg:1\n"), err
    code, out, err = cli(capsys, "models", "list", "--repository", repo)
    assert code == 0 and "digits-logreg" in out and "live" in out, err
    assert not (tmp_path / "repo" / "registry.db").exists()  # the metadata went to PostgreSQL
    with psycopg.connect(pg_url) as db:
        (uri,) = db.execute("SELECT model_uri FROM versions WHERE name = 'digits-logreg'").fetchone()
    assert uri.startswith(str(tmp_path / "repo" / "artifacts" / "digits-logreg"))  # the artifacts stayed local
    monkeypatch.setenv("INFERLINE_REGISTRY_DB", str(tmp_path / "file.db"))  # a file: remote repositories only
    code, out, _ = cli(capsys, "models", "list", "--repository", repo)
    assert code == 0 and "digits-logreg" not in out and (tmp_path / "repo" / "registry.db").exists()
