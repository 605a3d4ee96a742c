"""The routing policy as plain immutable data, published whole by a controller.

A snapshot never changes once built: a reader that took it sees one consistent policy for the
whole request even while the controller publishes the next one. The next issue adds per-model
arms (weights over hash buckets of the routing key), shadow targets and fallback chains to
``ModelRoutes``; readers keep reading one snapshot per request.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Tuple


@dataclass(frozen=True)
class ModelRoutes:
    """Where one model's requests go."""

    name: str
    """Model name."""
    live: Optional[int]
    """The version that a request without a version reaches: the registry's live version when it
    serves, else the version that served before, else any served version (the newest)."""
    served: Tuple[int, ...]
    """Versions that take traffic (loaded, warmed and wanted), sorted."""

    def __post_init__(self):
        object.__setattr__(self, "served", tuple(sorted(self.served)))
        if self.served and self.live not in self.served:
            raise ValueError(f"model {self.name!r}: live version {self.live} is not among the served "
                             f"versions {list(self.served)}")


@dataclass(frozen=True)
class RoutingSnapshot:
    """The whole routing policy at one moment (``epoch`` bumps on every publish)."""

    epoch: int = 0
    """Increases with every published snapshot; lets stats and logs say which policy answered."""
    models: Mapping[str, ModelRoutes] = field(default_factory=lambda: types.MappingProxyType({}))
    """Model name -> its routes; only models with at least one served version."""

    @classmethod
    def build(cls, epoch: int, routes: Iterable[ModelRoutes]) -> "RoutingSnapshot":
        """A snapshot of the models in ``routes`` that serve at least one version (read-only)."""
        models = {r.name: r for r in routes if r.served}
        return cls(epoch, types.MappingProxyType(dict(sorted(models.items()))))

    def served(self) -> list:
        """[(name, version, is_live_route)] of every served version, sorted."""
        return [(r.name, v, v == r.live) for r in self.models.values() for v in r.served]


EMPTY = RoutingSnapshot()
"""The snapshot before the controller's first publish: nothing is served."""
