"""Fixtures of the server tests. Servers run in-process (server_fixtures.ServerThread) or as real
`inferline serve` processes (test_process.py)."""

import pytest

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    registry = open_registry(str(path))
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))
    registry.close()
    return path
