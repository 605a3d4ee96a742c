"""Rollouts as routing policy: the core's arms for a canary weight, and the recorder's watches.

The split is sticky by construction. Of the core's 10,000 hash buckets of the routing key, the
canary owns the top ``round(weight x 100)`` and the stable version the rest::

    weight 5%:   stable [0, 9500)   canary [9500, 10000)
    weight 10%:  stable [0, 9000)   canary [9000, 10000)

so a key on the canary at 5% is still on it at 10% (its bucket only ever stays inside the growing
range), and every process computes the same arm for the same key (the hash is pinned in the core).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

from .recorder import Watch

BUCKETS = 10_000
"""The core's route buckets (route_policy.h kRouteBuckets)."""
MIRROR_BUDGET = 10.0
"""Mirrored copies of canary requests are kept within this percent of the model's traffic: at a
5% weight every canary request is mirrored (as configured), at 50% one in five, at 100% one in ten."""


def mirror_share(configured: float, weight: float) -> float:
    """The percent of canary-routed requests mirrored to stable at ``weight``: the configured
    ``canary.mirror_share``, capped so that the copies stay within ``MIRROR_BUDGET`` of traffic."""
    return min(float(configured), 100.0 * MIRROR_BUDGET / weight) if weight > 0 else float(configured)


def canary_buckets(weight: float) -> int:
    """How many buckets a canary at ``weight`` percent owns."""
    return max(0, min(BUCKETS, int(round(float(weight) * BUCKETS / 100.0))))


def arms(stable: int, canary: int, weight: float) -> List[dict]:
    """The core policy's "arms" for a canary at ``weight`` percent beside ``stable``."""
    cut = BUCKETS - canary_buckets(weight)
    out = []
    if cut > 0:
        out.append({"version": int(stable), "lo": 0, "hi": cut})
    if cut < BUCKETS:
        out.append({"version": int(canary), "lo": cut, "hi": BUCKETS})
    return out


def canary_chain(name: str, stable: int, chain: List[dict]) -> List[dict]:
    """The canary's fallback chain: the stable version first (a canary failure is answered by
    stable, and counted against the canary), then its own links that do not revisit it."""
    first = {"model": name, "version": int(stable)}
    return [first] + [link for link in chain if link != first]


def watches(rollouts: Mapping[str, object], shadows: Mapping[str, object], live: Mapping[str, int],
            served: Mapping[str, tuple], mirror_share: Mapping[str, float],
            copy_caps: Optional[Mapping[str, tuple]] = None) -> Dict[str, Watch]:
    """The recorder's watches: one per model with an active rollout whose canary serves, or a
    shadow whose version serves (``live``: model -> live version; ``served``: model -> versions;
    ``copy_caps``: model -> (mirror cap, shadow cap) in copies per second, None: no cap)."""
    out: Dict[str, Watch] = {}
    for name in sorted(set(rollouts) | set(shadows)):
        stable: Optional[int] = live.get(name)
        versions = served.get(name, ())
        if stable is None or stable not in versions:
            continue
        r, s = rollouts.get(name), shadows.get(name)
        canary = r.version if r is not None and r.version in versions else None
        shadow = s.version if s is not None and s.version in versions else None
        if canary is None and shadow is None:
            continue
        caps = (copy_caps or {}).get(name, (0.0, 0.0))
        out[name] = Watch(name, stable, canary=canary, window=r.window if canary is not None else None,
                          mirror_share=float(mirror_share.get(name, 100.0)), shadow=shadow,
                          shadow_share=float(s.share) if shadow is not None else 0.0,
                          shadow_window=s.window if shadow is not None else None,
                          record_predictions=canary is not None or shadow is not None,
                          mirror_max_per_s=float(caps[0]), shadow_max_per_s=float(caps[1]))
    return out
