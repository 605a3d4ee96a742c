"""Fixtures of the registry (storage) tests: a fresh registry and a package source directory.

Every test that takes ``reg`` (or ``metadata``) runs twice: with the metadata in SQLite (the
repository's ``registry.db``) and in a fresh database on a real PostgreSQL server
(``pg_fixtures.pg_server``: skipped on a developer's machine without one, failed under CI).
"""

import pytest

from inferline.registry import Registry

from pg_fixtures import pg_server, pg_url  # noqa: F401  (the session's server, a fresh database)


@pytest.fixture(params=["sqlite", "postgres"])
def metadata(request):
    """The ``metadata_path`` to open registries with: None (SQLite in the repository directory) or
    the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def reg(tmp_path, metadata):
    r = Registry.open(str(tmp_path / "repo"), metadata)
    yield r
    r.close()


@pytest.fixture
def src(tmp_path):
    return tmp_path / "src"
