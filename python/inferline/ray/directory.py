"""The endpoint directory: which replica of which pool listens where, and how loaded it is.

Requests never pass through Ray Serve: a gateway sends them straight to a replica's gRPC port.
Serve only keeps the replicas alive, so the gateway needs another place to learn the endpoints.
Each replica heartbeats its endpoint and load here every half second with a short time to live;
an entry that stops heartbeating (a killed worker, a partitioned node) drops out by itself, so
the directory never needs to be told about a crash.

One detached, named actor per cluster ("inferline-directory" in namespace "inferline"), created
by whoever asks first. It holds only soft state: after a restart (max_restarts=-1) the next
heartbeats refill it within a second.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from typing import Dict, List, Optional

import ray

NAMESPACE = "inferline"
ACTOR_NAME = "inferline-directory"


def pool_name(name: str, version: int) -> str:
    """A pool's key in the directory: one model version, "NAME:VERSION"."""
    return f"{name}:{int(version)}"


def app_name(name: str, version: int) -> str:
    """The Serve application that runs a pool: letters, digits, '-' and '_' only, so that any
    model name (which may hold '.') gives a name that Serve and its logs accept."""
    return f"inferline-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-v{int(version)}"


class Directory:
    """Soft-state table of pool -> replica -> (endpoint, load, expiry)."""

    def __init__(self):
        self._entries: Dict[str, Dict[str, dict]] = {}

    def report(self, pool: str, replica: str, endpoint: str, load: dict, ttl_s: float) -> None:
        """A replica's heartbeat: it listens at `endpoint` and will heartbeat again within ttl_s."""
        now = time.monotonic()
        self._entries.setdefault(pool, {})[replica] = {
            "endpoint": endpoint, "load": dict(load or {}), "at": now, "expires": now + float(ttl_s)}

    def remove(self, pool: str, replica: str) -> None:
        """A replica going away on purpose: gone at once, not after its ttl."""
        replicas = self._entries.get(pool)
        if replicas is not None:
            replicas.pop(replica, None)
            if not replicas:
                del self._entries[pool]

    def endpoints(self) -> Dict[str, List[dict]]:
        """Live entries by pool, each list sorted by replica id so that callers see a stable order."""
        now = time.monotonic()
        out: Dict[str, List[dict]] = {}
        for pool in list(self._entries):
            replicas = self._entries[pool]
            for replica in [r for r, e in replicas.items() if e["expires"] < now]:
                del replicas[replica]
            if not replicas:
                del self._entries[pool]
                continue
            out[pool] = [{"replica": r, "endpoint": e["endpoint"], "load": dict(e["load"]),
                          "age_s": now - e["at"]} for r, e in sorted(replicas.items())]
        return out


def connect(address: Optional[str] = "auto") -> None:
    """Joins the cluster at `address` in the inferline namespace (a no-op when already joined);
    None starts a local cluster that lives as long as this process."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _use_token_if_any()
    if address is not None and not address.startswith("ray://"):
        _check_reachable(address)
    ray.init(address=address, namespace=NAMESPACE, ignore_reinit_error=True, logging_level=logging.ERROR,
             log_to_driver=False, configure_logging=True)


def _use_token_if_any() -> None:
    """`ray start` turns token authentication on by default and writes ~/.ray/auth_token; a driver
    that joins with RAY_AUTH_MODE unset would not send it, and the GCS refuses it (after retrying
    for a long while). So send the token whenever one is there, unless the mode is set."""
    if not os.environ.get("RAY_AUTH_MODE") and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
        os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        try:  # Ray read its config when imported, perhaps before the mode was set: read it again
            from ray._raylet import Config
            Config.initialize("")
        except (ImportError, AttributeError):
            pass


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fails fast with ConnectionError: ray.init retries an unreachable GCS for minutes."""
    from ray._private.services import canonicalize_bootstrap_address

    resolved = canonicalize_bootstrap_address(address) or address  # "auto": RAY_ADDRESS or the running one
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"no Ray cluster answers at {resolved} ({e})") from None


def directory():
    """The cluster's directory actor, created on first use. Needs `connect` first."""
    actor = ray.remote(Directory).options(
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=-1)
    return actor.remote()
