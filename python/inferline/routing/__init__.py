"""Routing: which model version answers a request.

A controller (the server's ``ModelManager``) decides the policy off the hot path and publishes it
as an immutable ``RoutingSnapshot``; the ``Router`` swaps snapshots whole and answers
``route(name, version, routing_key)`` from the current one without taking any lock that the
controller holds. Today's policy: an explicit version if it is served, else the model's live
version, else any version that serves. Canary arms, shadow and fallback chains extend
``ModelRoutes`` (policy stays here; the per-request mechanism moves into the core). ``policy``
builds each model's fallback chains, breaker and cache settings from registry records, in the
shape of the core Router's structs (not yet wired into the server).
"""

from .policy import FallbackLink, ModelPolicy, VersionPolicy, build_model_policy, build_policies
from .router import EngineLookup, Router
from .snapshot import EMPTY, ModelRoutes, RoutingSnapshot

__all__ = ["EMPTY", "EngineLookup", "FallbackLink", "ModelPolicy", "ModelRoutes", "Router", "RoutingSnapshot",
           "VersionPolicy", "build_model_policy", "build_policies"]
