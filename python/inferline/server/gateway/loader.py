"""How a gateway "loads" a version: a forwarder to its pool, in place of the artifact.

The forwarder's config is the version's own (signature, batching, queue, breaker, cache) without its
preprocessing (the replica applies it, once) and without its GPU placement (the replica has the GPU);
its executors are ``FORWARD_INSTANCES`` threads, each blocked on one forward at a time. A version
whose pool has no replica yet is not loaded (``LoadDeferred``): the manager tries again at its next
poll, and until then the version takes no traffic (a canary whose pool is still starting must not
be judged by fallback answers).
"""

from __future__ import annotations

import dataclasses
import json
import time

from ...backends.python import PythonBackend
from ...config import GpuConfig, ModelConfig
from ...errors import FailedPrecondition, InvalidArgument, LoadDeferred, Unavailable
from ...models.loader import LoadReport
from ...models.package import CONFIG_KEYS
from .pools import PoolSet, pool_name

FORWARD_INSTANCES = 8
"""Forwards one version may have in flight from this gateway (each carries a whole batch)."""


def gateway_config(record) -> ModelConfig:
    """The forwarder's config for one registry version."""
    config = ModelConfig.from_dict({"name": record.name, **{k: record.config[k] for k in CONFIG_KEYS
                                                             if k in record.config}})
    return dataclasses.replace(config, version=int(record.version), preprocessing={}, gpu=GpuConfig(),
                               instances=FORWARD_INSTANCES)


def remote_loader(pools: PoolSet):
    """A ``ModelManager`` loader that loads forwarders to ``pools``."""
    def load(engine, registry, record):
        t0 = time.perf_counter()
        pool = pools.pool(record.name, record.version)
        if not pool.ready:
            raise LoadDeferred(f"pool {pool_name(record.name, record.version)} has no replica serving yet "
                               f"(`inferline ray deploy` runs it)")
        handle = engine.load(gateway_config(record), PythonBackend(pool.forward))
        env = {"api": "gateway", "pool": pool_name(record.name, record.version)}
        return handle, LoadReport(time.perf_counter() - t0, {}, env)
    return load


def pool_source(address: str):
    """Where the replicas' endpoints come from: ``file:PATH`` (a JSON object ``{"name:version":
    ["host:port", ...]}``, re-read at every refresh: replicas run by something other than Ray), else a
    Ray cluster's address ("auto", "host:6379", "ray://...") whose directory the replicas report to."""
    if address.startswith("file:"):
        return file_source(address[len("file:"):])
    return ray_source(address)


def file_source(path: str):
    """A ``PoolSet`` source reading a JSON file of endpoints (a file that does not parse keeps the last)."""
    def source():
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise InvalidArgument(f"{path}: expected {{\"name:version\": [\"host:port\", ...]}}")
        return data
    try:
        source()  # a missing or broken file is a startup error, not a warning
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"--ray file:{path}: {e}") from None
    return source


def ray_source(address: str, timeout_s: float = 2.0):
    """A ``PoolSet`` source reading the Ray directory that the replicas report to."""
    try:
        import ray

        from ...ray import directory as ray_directory
    except ImportError as e:
        raise FailedPrecondition(f"--ray {address}: Ray is not installed ({e}): pip install 'inferline[ray]'") from None
    try:
        ray_directory.connect(address)
        handle = ray_directory.directory()
    except Exception as e:
        raise Unavailable(f"--ray {address}: cannot reach the Ray cluster: {str(e).splitlines()[0]}") from None

    def source():
        entries = ray.get(handle.endpoints.remote(), timeout=timeout_s)
        return {pool: [e["endpoint"] for e in items] for pool, items in entries.items()}
    return source
