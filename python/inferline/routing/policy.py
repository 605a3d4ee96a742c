"""Per-model routing policy built from registry records: plain, immutable data for the core's Router.

``build_policies(records)`` turns the registry's versions (``VersionRecord``: name, version, state,
is_live, fallback_id, config) into one ``ModelPolicy`` per model: its live version, the versions
it serves (live and canary), and for each served version its fallback chain, breaker and cache
settings. Pure functions over records, no I/O and no engine: a controller builds a policy off the
hot path whenever the registry changes and hands ``ModelPolicy.to_core()`` down whole.

Fallback chains are resolved when the policy is built: a ``"name"`` link becomes that model's live
version now (the next registry change rebuilds the policy), so the core gets numbered links. The
registry refuses cycles at push and set-fallback, but a promote or rollback can still close one
through a ``"name"`` link: a chain stops before it would revisit a version (the served version
itself included), and at a link that resolves to nothing (a model without a live version).

Shapes (``to_core``), by the core's names (router.h ``VersionPolicy``, route_policy.h
``FallbackLink``, circuit_breaker.h ``BreakerConfig``); the core tries a primary's chain only
(flat), which is why each chain here is already followed to its end::

    {"name": "m", "live": 3, "served": [3, 4], "versions": [
        {"version": 3, "chain": [{"model": "m", "version": 2}, {"model": "small", "version": 1}],
         "breaker": {"consecutive_failures": 5, ...}, "cache_bytes": 0, "cache_last_resort": False}, ...]}
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..config import BreakerConfig, CacheConfig
from ..errors import InvalidArgument
from ..registry import parse_ref
from ..registry._records import fallback_path

SERVED_STATES = ("live", "canary")
"""States of the versions that take traffic."""


@dataclass(frozen=True)
class FallbackLink:
    """One link of a fallback chain: the core's ``FallbackLink``."""

    model: str
    """Model name."""
    version: int
    """The version, resolved when the policy was built (>= 1)."""
    follows_live: bool = False
    """The registry's link was ``"name"`` (that model's live version): it moves with promotes."""

    def to_core(self) -> dict:
        return {"model": self.model, "version": int(self.version)}


@dataclass(frozen=True)
class VersionPolicy:
    """What the core needs per served version."""

    version: int
    """The served version."""
    fallback: Tuple[FallbackLink, ...]
    """Tried in order when this version cannot answer (empty: none); never revisits a version."""
    breaker: BreakerConfig
    """When this version's circuit breaker opens."""
    cache: CacheConfig
    """This version's prediction cache (max_bytes 0: none)."""

    def to_core(self) -> dict:
        return {"version": int(self.version), "chain": [link.to_core() for link in self.fallback],
                "breaker": self.breaker.to_core(), "cache_bytes": int(self.cache.max_bytes),
                "cache_last_resort": self.cache.mode == "last_resort"}


@dataclass(frozen=True)
class ModelPolicy:
    """One model's routing policy (immutable)."""

    name: str
    """Model name."""
    live: Optional[int]
    """The registry's live version, or None."""
    served: Tuple[int, ...]
    """Live and canary versions, sorted."""
    versions: Mapping[int, VersionPolicy]
    """Served version -> its policy (read-only)."""

    def to_core(self) -> dict:
        return {"name": self.name, "live": self.live, "served": list(self.served),
                "versions": [self.versions[v].to_core() for v in self.served]}


def build_policies(records: Iterable[Any]) -> Mapping[str, ModelPolicy]:
    """Model name -> ModelPolicy for every model of ``records`` (all the registry's versions, so
    that chains into other models resolve), read-only and sorted by name."""
    records = list(records)
    names = sorted({r.name for r in records})
    return types.MappingProxyType({n: build_model_policy(n, records) for n in names})


def build_model_policy(name: str, records: Iterable[Any]) -> ModelPolicy:
    """The policy of model ``name`` from ``records`` (its versions and those its chains reach)."""
    records = list(records)
    resolve = _resolver(records)
    mine = sorted((r for r in records if r.name == name), key=lambda r: r.version)
    live = next((r.version for r in mine if r.is_live), None)
    served = tuple(r.version for r in mine if r.state in SERVED_STATES)
    versions = {r.version: version_policy(r, resolve) for r in mine if r.version in served}
    return ModelPolicy(name, live, served, types.MappingProxyType(versions))


def version_policy(record: Any, resolve) -> VersionPolicy:
    """One version's policy: its chain via ``resolve(name, version or None for live)``, its
    breaker and cache from its stored config (defaults where the config has none)."""
    return VersionPolicy(record.version, fallback_chain(record, resolve),
                         _section(BreakerConfig, record, "breaker"), _section(CacheConfig, record, "cache"))


def fallback_chain(record: Any, resolve) -> Tuple[FallbackLink, ...]:
    """The links after ``record`` (the registry's walk, ``fallback_path``), without the one that
    would revisit a version when the links form a cycle."""
    path, closed = fallback_path(record, resolve)
    links = path[1:-1] if closed else path[1:]
    unpinned = _unpinned_steps(record, resolve, len(links))
    return tuple(FallbackLink(n, v, follows) for (n, v), follows in zip(links, unpinned))


def _unpinned_steps(record: Any, resolve, count: int) -> list:
    """For each of the first ``count`` links from ``record``: whether its ref was ``"name"``."""
    out, ref = [], record.fallback_id
    for _ in range(count):
        name, version = parse_ref(ref, "fallback_id")
        out.append(version is None)
        ref = resolve(name, version).fallback_id
    return out


def _resolver(records: list):
    by_ref: Dict[Tuple[str, int], Any] = {(r.name, r.version): r for r in records}
    live = {r.name: r for r in records if r.is_live}
    return lambda n, v: live.get(n) if v is None else by_ref.get((n, v))


def _section(cls, record: Any, key: str):
    data = (record.config or {}).get(key) or {}
    try:
        return cls(**data)
    except TypeError as e:
        raise InvalidArgument(f"model {record.name!r} version {record.version}: {key}: {e}") from None
