"""The Router: answers which loaded model version a request reaches, from the current snapshot.

Locking: none on the request path. ``publish`` replaces the snapshot reference in one store
(atomic in Python; the C++ core will use ``std::atomic<std::shared_ptr<const RoutePolicy>>``),
and ``route`` reads it once per request, so a request sees one whole policy and never waits on
the controller, the registry or a load in progress.
"""

from __future__ import annotations

from typing import Optional, Protocol

from ..errors import ModelNotFound
from .snapshot import EMPTY, ModelRoutes, RoutingSnapshot


class EngineLookup(Protocol):
    """What routing needs of the engine: the loaded handle of one version (the engine owns what is
    loaded; ``inferline.engine.Engine`` satisfies this)."""

    def model(self, name: str, version: Optional[int] = None):
        ...


class Router:
    """Routes requests to model handles under the policy that a controller publishes."""

    def __init__(self, engine: EngineLookup):
        self._engine = engine
        self._snapshot: RoutingSnapshot = EMPTY

    # Controller side (one publisher at a time; readers never block on it).
    def publish(self, snapshot: RoutingSnapshot) -> None:
        """Makes ``snapshot`` the policy for every request that starts from now on."""
        self._snapshot = snapshot

    @property
    def snapshot(self) -> RoutingSnapshot:
        """The current policy (immutable)."""
        return self._snapshot

    # Request side (any thread, lock-free).
    def route(self, name: str, version: str = "", routing_key: Optional[str] = None):
        """The handle of the version that answers this request: ``version`` if given and served,
        else the model's live route. ``routing_key`` picks canary arms once the policy has them;
        today every key of a model goes to the same version. ModelNotFound names the model, the
        version and what is served instead."""
        snapshot = self._snapshot
        routes = snapshot.models.get(name)
        if routes is None:
            raise ModelNotFound(f"model {name!r} is not being served")
        target = _pick(routes, version)
        try:
            return self._engine.model(name, target)
        except ModelNotFound:
            if snapshot is self._snapshot:
                raise
            return self.route(name, version, routing_key)  # republished meanwhile (a hot reload)

    def ready(self, name: str, version: str = "") -> bool:
        """Whether ``route(name, version)`` would find a served version now."""
        routes = self._snapshot.models.get(name)
        if routes is None:
            return False
        try:
            _pick(routes, version)
        except ModelNotFound:
            return False
        return True

    def served(self) -> list:
        """[(name, version, is_live_route)] of every served version."""
        return self._snapshot.served()


def _pick(routes: ModelRoutes, version) -> int:
    """The version a request for ``version`` ("" or None: the live route) reaches."""
    if version in ("", None):
        return routes.live
    try:
        v = int(version)
    except ValueError:
        raise ModelNotFound(f"model {routes.name!r}: version {version!r} is not a number") from None
    if v not in routes.served:
        served = ", ".join(str(x) for x in routes.served)
        raise ModelNotFound(f"model {routes.name!r} version {v} is not being served (serving: {served})")
    return v
