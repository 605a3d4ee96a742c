"""Routing: the Router answers from the snapshot the controller (ModelManager) publishes whole."""

import asyncio
import json
import shutil
import threading

import pytest

from inferline import errors
from inferline.demo_models import demo_package_path
from inferline.engine import Engine
from inferline.models.service import open_registry, push
from inferline.routing import EMPTY, ModelRoutes, Router, RoutingSnapshot
from inferline.service.sync import ModelManager, _choose_route

from server_fixtures import make_repository


class FakeEngine:
    """The engine lookup routing needs: model(name, version) of what is loaded."""

    def __init__(self, *loaded):
        self.loaded = set(loaded)
        self.lookups = []

    def model(self, name, version=None):
        self.lookups.append((name, version))
        if (name, version) not in self.loaded:
            raise errors.ModelNotFound(f"model {name!r} version {version} is not loaded")
        return (name, version)


def snapshot(epoch=1, **models):
    return RoutingSnapshot.build(epoch, [ModelRoutes(n, live, served) for n, (live, served) in models.items()])


def test_route_explicit_version_else_the_live_route():
    router = Router(FakeEngine(("m", 1), ("m", 2)))
    router.publish(snapshot(m=(1, (2, 1))))
    assert router.route("m") == ("m", 1) and router.route("m", "") == ("m", 1)
    assert router.route("m", "2") == ("m", 2)
    assert router.route("m", "", routing_key="user-7") == ("m", 1)  # one arm today: every key alike
    assert router.served() == [("m", 1, True), ("m", 2, False)]
    assert router.ready("m") and router.ready("m", "2") and not router.ready("m", "3")


@pytest.mark.parametrize("name, version, match", [
    ("nope", "", r"model 'nope' is not being served"),
    ("m", "3", r"model 'm' version 3 is not being served \(serving: 1, 2\)"),
    ("m", "x", r"model 'm': version 'x' is not a number"),
])
def test_unknown_models_and_versions_name_what_serves(name, version, match):
    router = Router(FakeEngine(("m", 1), ("m", 2)))
    router.publish(snapshot(m=(1, (1, 2))))
    with pytest.raises(errors.ModelNotFound, match=match):
        router.route(name, version)


def test_nothing_is_served_before_the_first_publish():
    router = Router(FakeEngine(("m", 1)))
    assert router.snapshot is EMPTY and router.served() == []
    with pytest.raises(errors.ModelNotFound, match="not being served"):
        router.route("m")


def test_snapshots_are_immutable_and_swapped_whole():
    routes = ModelRoutes("m", 2, (2, 1))
    assert routes.served == (1, 2)
    with pytest.raises(Exception):
        routes.live = 1
    snap = RoutingSnapshot.build(3, [routes, ModelRoutes("empty", None, ())])
    assert list(snap.models) == ["m"]  # a model with nothing served is not routable
    with pytest.raises(TypeError):
        snap.models["x"] = routes
    with pytest.raises(ValueError, match="live version 3 is not among the served"):
        ModelRoutes("m", 3, (1, 2))
    router = Router(FakeEngine(("m", 1), ("m", 2)))
    router.publish(snap)
    held = router.snapshot
    router.publish(snapshot(4, m=(1, (1,))))
    assert held.models["m"].live == 2 and router.snapshot.models["m"].live == 1  # the old one is untouched


def test_a_request_that_races_a_republish_follows_the_new_snapshot():
    engine = FakeEngine(("m", 2))
    router = Router(engine)
    router.publish(snapshot(1, m=(1, (1,))))  # v1 is being unloaded

    real = engine.model

    def model(name, version=None):
        if version == 1:
            router.publish(snapshot(2, m=(2, (2,))))  # the controller moved on meanwhile
        return real(name, version)
    engine.model = model
    assert router.route("m") == ("m", 2)


def test_route_takes_no_lock_that_the_controller_holds():
    """A controller that holds its own lock while publishing never blocks routing."""
    router = Router(FakeEngine(("m", 1)))
    router.publish(snapshot(m=(1, (1,))))
    controller_lock = threading.Lock()
    with controller_lock:  # e.g. the manager mid-sync
        result = []
        t = threading.Thread(target=lambda: result.append(router.route("m")))
        t.start()
        t.join(5)
    assert result == [("m", 1)]


@pytest.mark.parametrize("live, loaded, before, expected", [
    (2, {1, 2}, 1, 2),        # the live version serves: it takes the route
    (2, {1}, 1, 1),           # the live version failed to load: the one that served keeps it
    (None, {1, 3}, None, 3),  # no live version: any serving version (the newest)
    (None, set(), 1, None),
])
def test_choose_route(live, loaded, before, expected):
    assert _choose_route(live, loaded, before) == expected


def test_manager_publishes_what_the_engine_holds(tmp_path, monkeypatch):
    """The manager keeps no map of handles: the snapshot's served versions are what the engine
    holds; a new live version takes the route, the retired one is unloaded after the publish."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    repo = make_repository(tmp_path)
    engine = Engine()
    manager = ModelManager(engine, repository=repo)
    try:
        asyncio.run(manager.sync())
        snap = manager.router.snapshot
        assert snap.epoch == 1 and not hasattr(manager, "_served")
        assert sorted((n, v) for n, v, _ in snap.served()) == engine.models()
        handle = manager.handle("digits-mlp")
        assert (handle.name, handle.version) == ("digits-mlp", 1)
        registry = open_registry(repo)
        pkg = tmp_path / "pkg"
        shutil.copytree(demo_package_path("digits-logreg"), pkg)
        data = json.loads((pkg / "model.json").read_text())
        data["labels"] = {"retrained": "yes"}
        (pkg / "model.json").write_text(json.dumps(data))
        push(registry, str(pkg), live=True)
        registry.close()
        asyncio.run(manager.sync())
        routes = manager.router.snapshot.models["digits-logreg"]
        assert (routes.live, routes.served) == (2, (2,)) and manager.router.snapshot.epoch == 2
        assert ("digits-logreg", 1) not in engine.models()  # retired: unloaded after the publish
        asyncio.run(manager.unload_model("digits-logreg"))
        assert "digits-logreg" not in manager.router.snapshot.models
        assert manager.readiness("digits-logreg")[1].startswith("unloaded by request")
    finally:
        manager.close()
        engine.close()
