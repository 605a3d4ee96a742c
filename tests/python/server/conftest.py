"""Fixtures of the server tests. Servers run in-process (server_fixtures.ServerThread) or as real
`inferline serve` processes (test_process.py)."""

import pytest

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push

from server_fixtures import GRPC_FRONTENDS, require_native_frontend


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    registry = open_registry(str(path))
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))
    registry.close()
    return path


@pytest.fixture(scope="module", params=GRPC_FRONTENDS)
def grpc_frontend(request) -> str:
    """Which gRPC frontend serves: each test that takes this runs against "python" and "native"
    (server_fixtures.grpc_starter; the native case skips where it is not built, fails under CI)."""
    if request.param == "native":
        require_native_frontend()
    return request.param
