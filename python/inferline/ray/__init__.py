"""Scale-out on Ray Serve: each model version a pool of `inferline serve` replicas (replica.py),
kept in step with the registry (deploy.py), sized on inferline's in-flight count (autoscale.py),
and listed with their endpoints and load in a directory actor that gateways read (directory.py).

Needs the `ray` extra (`pip install 'inferline[ray]'`); importing this package imports Ray.
`inferline.ray.directory` stays the module (gateways call `directory.connect` and
`directory.directory()`), so the package re-exports the names that do not clash with it.
"""

from .directory import ACTOR_NAME, NAMESPACE, Directory, app_name, connect, pool_name

__all__ = ["ACTOR_NAME", "NAMESPACE", "Directory", "app_name", "connect", "pool_name"]
