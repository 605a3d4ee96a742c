"""The gateway: ``inferline serve --ray ADDRESS``.

It runs the frontends, admission control and routing policy of a server (the core's deterministic
split, shadow, fallback chains, breakers, cache), but each served version is a *forwarder* to that
version's pool of replicas instead of a loaded artifact (pools.py): the core assembles micro-batches
as for any model and hands each batch to a replica. Ray Serve places, restarts and scales the
replicas (``inferline.ray``); no request passes through Ray.
"""

from .loader import file_source, pool_source, ray_source, remote_loader
from .pools import Pool, PoolSet, ReplicaFailed, pool_name

__all__ = ["Pool", "PoolSet", "ReplicaFailed", "pool_name", "file_source", "pool_source", "ray_source", "remote_loader"]
