"""Routing: which model version answers a request.

Policy here, mechanism in the core. A controller (``service.sync.ModelManager``) decides the
policy off the hot path and publishes it twice, whole: as an immutable ``RoutingSnapshot`` to the
Python ``Router`` (what serves: metadata, readiness, explicit versions; ``route`` reads it without
a lock), and, built by ``policy`` from the registry (arms, per-version fallback chains, breakers,
cache), to the core's Router (``csrc/include/inferline/router.h``), which routes every request
and applies the fallbacks on every entry point alike.
"""

from .policy import FallbackLink, ModelPolicy, VersionPolicy, build_model_policy, build_policies
from .router import EngineLookup, Router
from .snapshot import EMPTY, ModelRoutes, RoutingSnapshot

__all__ = ["EMPTY", "EngineLookup", "FallbackLink", "ModelPolicy", "ModelRoutes", "Router", "RoutingSnapshot",
           "VersionPolicy", "build_model_policy", "build_policies"]
