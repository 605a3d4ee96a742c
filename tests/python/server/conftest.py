"""Fixtures of the server tests. Servers run in-process (server_fixtures.ServerThread) or as real
`inferline serve` processes (test_process.py)."""

import gc

import pytest

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push

from helpers import make_config
from native_helpers import double
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


# ---- _core.NativeFrontend (test_native_binding.py, test_native_tap.py) ------------------

@pytest.fixture
def router():
    """A _core.Router over a _core.Engine with model "a" (y = 2x) under a single-version policy."""
    from inferline import _core

    engine = _core.Engine()
    engine.load(make_config("a", delay_us=200).to_core(), _core.python_backend(double, ["y"]))
    r = _core.Router(engine)
    r.publish("a", {"name": "a", "live": 1, "served": [1],
                    "versions": [{"version": 1, "chain": [], "breaker": None, "cache_bytes": 0,
                                  "cache_last_resort": False}]})
    yield r
    del r
    gc.collect()
    engine.shutdown()


@pytest.fixture
def start(router):
    """start(control=None, tap=False, **options) -> (frontend, tritonclient); both closed after the test."""
    import tritonclient.grpc as tc

    from inferline import _core

    made = []

    def _start(control=None, tap=False, **options):
        fe = _core.NativeFrontend(router, {"address": "127.0.0.1:0", "threads": 2, **options}, control, tap)
        client = tc.InferenceServerClient(f"127.0.0.1:{fe.port}")
        made.append((fe, client))
        return fe, client

    yield _start
    for fe, client in made:
        client.close()
        fe.shutdown(0)
    made.clear()
    gc.collect()
