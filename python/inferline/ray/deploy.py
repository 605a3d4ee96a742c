"""Keeping one Serve application per pool in step with the registry.

The pools are the versions a gateway may send requests to: every live, canary and shadow version,
the versions of active rollouts, and whatever the fallback chains of those reach. Each pool is a
Serve application named by `app_name` with one deployment of `Replica`.

Three rules make re-running safe:
- an unchanged pool is left alone. The deployment's name carries a hash of its options, so a
  pool whose application already runs that deployment is not redeployed (and Serve never sees a
  new code version that would restart its replicas);
- a pool whose options changed is redeployed (Serve replaces its replicas);
- a pool that is no longer wanted keeps running for `grace_s` after it was first seen unwanted,
  so that a gateway reading the same registry stops routing to it before its replicas go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from typing import Dict, Optional, Tuple

from .directory import app_name, connect, directory, pool_name

APP_PREFIX = "inferline-"
POOL_STATES = ("live", "canary", "shadow")


@dataclasses.dataclass(frozen=True)
class PoolOptions:
    """How each pool's replicas run (the same for every pool of one `deploy`)."""

    replicas: int = 1
    """fixed replica count, used when max_replicas is None"""
    canary_replicas: Optional[int] = None
    """fixed replica count of pools that are not a live version (canary, shadow, rollout targets);
    None: `replicas`. A canary takes a small share of the traffic, so it rarely needs as many"""
    min_replicas: Optional[int] = None
    """autoscaling lower bound (with max_replicas)"""
    max_replicas: Optional[int] = None
    """autoscaling upper bound; set it to autoscale on inferline's in-flight count"""
    target_inflight: float = 4.0
    """requests in flight per replica the autoscaler aims at"""
    upscale_delay_s: float = 5.0
    """a rise must last this long before replicas are added"""
    downscale_delay_s: float = 60.0
    """a fall must last this long before replicas are removed"""
    metrics_interval_s: float = 1.0
    """how often each replica pushes its in-flight figure to Serve's controller"""
    look_back_s: float = 5.0
    """window over which Serve averages that figure"""
    num_cpus: float = 0.5
    """logical CPUs per replica (Ray scheduling only; the child uses what the node gives it)"""
    num_gpus: float = 0.0
    """GPUs per replica: 1 places each on its own GPU (the child sees Ray's CUDA_VISIBLE_DEVICES)"""
    host: str = "127.0.0.1"
    """address each child binds; 0.0.0.0 advertises the node's IP"""
    drain_seconds: float = 3.0
    """the child's drain window on shutdown"""
    health_check_period_s: float = 2.0
    """how often Serve calls check_health; a killed replica is noticed within about this"""
    ready_timeout_s: float = 60.0
    """how long a child may take to load its model"""

    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def signature(self) -> str:
        """A short hash of everything that, changed, needs new replicas (of a resolved `for_pool`)."""
        raw = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:10]

    def for_pool(self, live: bool) -> "PoolOptions":
        """The options one pool runs with: canary_replicas folded into replicas, so that changing it
        changes the signature of the non-live pools only."""
        replicas = self.replicas if live or self.canary_replicas is None else self.canary_replicas
        return dataclasses.replace(self, replicas=replicas, canary_replicas=None)

    def starting_replicas(self) -> int:
        """Replicas a resolved pool has once started: its fixed count, or the autoscaling floor."""
        return (self.min_replicas or 1) if self.autoscaling() else self.replicas


def wanted_pools(registry) -> Dict[str, Tuple[str, int]]:
    """pool -> (name, version) for every version a gateway may route to (module docstring)."""
    records = {(r.name, r.version): r for r in registry.list()}
    live = {r.name: r for r in records.values() if r.is_live}
    roots = [k for k, r in records.items() if r.state in POOL_STATES or r.is_live]
    roots += [(a.name, a.version) for a in registry.rollouts.list_active()]
    roots += [(s.name, s.version) for s in registry.rollouts.shadows()]
    wanted: Dict[str, Tuple[str, int]] = {}
    for key in roots:
        while key is not None and pool_name(*key) not in wanted and key in records:
            wanted[pool_name(*key)] = key
            key = _fallback_target(records[key], live)
    return dict(sorted(wanted.items()))


def _live_pools(registry) -> set:
    return {pool_name(r.name, r.version) for r in registry.list() if r.is_live}


def _fallback_target(record, live) -> Optional[Tuple[str, int]]:
    """Where a version falls back to: a pinned "name:version", or that model's live version."""
    ref = record.fallback_id
    if not ref:
        return None
    name, _, version = ref.partition(":")
    if version:
        return name, int(version)
    target = live.get(name)
    return (target.name, target.version) if target is not None else None


def _application(name: str, version: int, repository: Optional[str], opts: PoolOptions,
                 slo_p99_ms: float = 200.0):
    """The Serve application of one pool (``slo_p99_ms``: the version's ``slo.p99_ms``, which the
    autoscaler holds its replicas to)."""
    from .replica import Replica

    settings = dict(num_replicas=opts.replicas)
    if opts.autoscaling():
        settings = dict(autoscaling_config=_autoscaling_config(opts))
    with warnings.catch_warnings():  # options() validates the autoscaling config again (see below)
        warnings.simplefilter("ignore", DeprecationWarning)
        deployment = _deployment(Replica, opts, settings)
    return deployment.bind(name, version, repository=repository, host=opts.host,
                           ready_timeout_s=opts.ready_timeout_s, drain_seconds=opts.drain_seconds,
                           slo_p99_ms=slo_p99_ms)


def _deployment(cls, opts: PoolOptions, settings: dict):
    from ray import serve

    return serve.deployment(cls).options(
        name=f"replica-{opts.signature()}",
        ray_actor_options={"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus},
        health_check_period_s=opts.health_check_period_s, health_check_timeout_s=10.0,
        graceful_shutdown_timeout_s=opts.drain_seconds + 20.0, graceful_shutdown_wait_loop_s=0.1,
        max_ongoing_requests=8, max_constructor_retry_count=3, **settings)


def _autoscaling_config(opts: PoolOptions):
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    from .autoscale import inflight_policy

    lo = opts.min_replicas if opts.min_replicas is not None else 1
    with warnings.catch_warnings():  # metrics_interval_s is "deprecated" but still the push period in 2.60
        warnings.simplefilter("ignore", DeprecationWarning)
        return AutoscalingConfig(
            min_replicas=lo, max_replicas=opts.max_replicas, target_ongoing_requests=opts.target_inflight,
            upscale_delay_s=opts.upscale_delay_s, downscale_delay_s=opts.downscale_delay_s,
            metrics_interval_s=opts.metrics_interval_s,
            look_back_period_s=max(opts.look_back_s, opts.metrics_interval_s * 2),
            policy=AutoscalingPolicy(policy_function=inflight_policy))


class Deployer:
    """One reconcile step at a time (`sync`); `watch` repeats it. Remembers since when each
    running pool has been unwanted, which is what the grace period counts from."""

    def __init__(self, registry, repository: Optional[str], opts: PoolOptions, grace_s: float = 10.0,
                 clock=time.monotonic):
        self.registry, self.repository, self.opts = registry, repository, opts
        self.grace_s = grace_s
        self._clock = clock
        self._unwanted_since: Dict[str, float] = {}
        self._serve_started = False

    def sync(self) -> dict:
        """Starts missing or changed pools, keeps unchanged ones, removes those unwanted for grace_s.
        Returns {"started", "kept", "waiting", "failed": {pool: error}, "draining": {app: seconds
        left}, "removed"}; "waiting": wanted pools whose application is still being deleted (from
        an earlier grace period), started at a later round."""
        if not self._serve_started:
            _start_serve()
            self._serve_started = True
        wanted = wanted_pools(self.registry)
        live = _live_pools(self.registry)
        running = {app: s for app, s in _serve_status().applications.items() if app.startswith(APP_PREFIX)}
        deleting = {app for app, s in running.items() if s.status == "DELETING"}
        report = {"started": [], "kept": [], "waiting": [], "failed": {}, "draining": {}, "removed": []}
        for pool, (name, version) in wanted.items():
            app = app_name(name, version)
            self._unwanted_since.pop(app, None)
            if app in deleting:
                report["waiting"].append(pool)
            else:
                self._start_or_keep(pool, name, version, self.opts.for_pool(pool in live), running.get(app),
                                    report)
        now = self._clock()
        wanted_apps = {app_name(n, v) for n, v in wanted.values()}
        for app in sorted(set(running) - wanted_apps - deleting):
            since = self._unwanted_since.setdefault(app, now)
            if now - since >= self.grace_s:
                from ray import serve
                serve.delete(app, _blocking=False)
                del self._unwanted_since[app]
                report["removed"].append(app)
            else:
                report["draining"][app] = self.grace_s - (now - since)
        for app in set(self._unwanted_since) - set(running):  # deleted by someone else
            del self._unwanted_since[app]
        return report

    def starting_replicas(self) -> Dict[str, int]:
        """pool -> the replicas it has once started, for every wanted pool."""
        live = _live_pools(self.registry)
        return {pool: self.opts.for_pool(pool in live).starting_replicas() for pool in wanted_pools(self.registry)}

    def _start_or_keep(self, pool: str, name: str, version: int, opts: PoolOptions, current,
                       report: dict) -> None:
        """Leaves a running application with this deployment (these options) alone; else deploys."""
        from ray import serve

        if current is not None and f"replica-{opts.signature()}" in current.deployments \
                and current.status != "DEPLOY_FAILED":
            report["kept"].append(pool)
            return
        try:
            serve.run(_application(name, version, self.repository, opts, self._slo_p99_ms(name, version)),
                      name=app_name(name, version),
                      route_prefix=None, blocking=False)
        except RuntimeError as e:  # the replicas failed to start (Serve gave up retrying): say so, go on
            report["failed"][pool] = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            return
        report["started"].append(pool)

    def _slo_p99_ms(self, name: str, version: int) -> float:
        config = self.registry.get(name, version).config or {}
        return float((config.get("slo") or {}).get("p99_ms", 200.0))

    def watch(self, poll_interval_s: float = 2.0, until=None, on_report=None) -> None:
        """Re-reads the registry every poll_interval_s; stops when `until()` is true (or never)."""
        while True:
            report = self.sync()
            if on_report is not None:
                on_report(report)
            if until is not None and until(report):
                return
            time.sleep(poll_interval_s)


def _serve_status():
    """serve.status() without the DeprecationWarning its parse of our metrics_interval_s raises."""
    from ray import serve

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return serve.status()


def _start_serve() -> None:
    """Serve without proxies: requests go to the replicas' own ports, never through Serve."""
    from ray import serve
    _quiet_serve()
    serve.start(proxy_location="Disabled")


def _quiet_serve() -> None:
    """Serve sets its driver-side logger to INFO when imported: one line per run/delete call."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def deploy(repository: Optional[str] = None, address: Optional[str] = "auto", opts: Optional[PoolOptions] = None,
           *, grace_s: float = 10.0, watch: bool = False, poll_interval_s: float = 2.0, wait_ready_s: float = 0,
           on_report=None, **options) -> dict:
    """Brings the cluster's pools in line with the registry once (or forever with watch=True).

    `options` are PoolOptions fields (replicas=2, or min_replicas=1, max_replicas=4, num_cpus,
    num_gpus, target_inflight, ...), applied over `opts`. Once: pools no longer wanted are still
    removed, after waiting out their grace period. With wait_ready_s, waits that long at most for
    every wanted pool to list its replicas in the directory. Returns the merged sync reports."""
    from ..models.service import open_registry

    opts = dataclasses.replace(opts or PoolOptions(), **options)
    connect(address)
    directory()  # create it before the replicas, which heartbeat to it
    deployer = Deployer(open_registry(repository), repository, opts, grace_s=grace_s)
    reports = []

    def done(report):
        reports.append(report)
        return not watch and not report["draining"] and not report["waiting"]

    deployer.watch(poll_interval_s, until=done, on_report=on_report)
    if wait_ready_s:
        wait_for_replicas(deployer.starting_replicas(), wait_ready_s)
    return _merge(reports)


def _merge(reports) -> dict:
    out = {"started": [], "kept": [], "waiting": [], "failed": {}, "draining": {}, "removed": []}
    for r in reports:
        out["started"] += [p for p in r["started"] if p not in out["started"]]
        out["removed"] += r["removed"]
    if reports:
        out["kept"] = [p for p in reports[-1]["kept"] if p not in out["started"]]
        out["draining"], out["failed"] = reports[-1]["draining"], reports[-1]["failed"]
    return out


def wait_for_replicas(want: Dict[str, int], timeout_s: float) -> Dict[str, list]:
    """Waits until each pool lists at least `want[pool]` replicas in the directory; returns them."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        listed = ray.get(directory().endpoints.remote())
        if all(len(listed.get(p, [])) >= n for p, n in want.items()):
            return listed
        if time.monotonic() > deadline:
            raise TimeoutError(f"pools not ready after {timeout_s:.0f} s: " + ", ".join(
                f"{p} {len(listed.get(p, []))}/{n}" for p, n in want.items()))
        time.sleep(0.25)


def status(address: str = "auto") -> dict:
    """{app: {"status", "message", "replicas": {state: n}, "pool", "endpoints": [directory entries]}}."""
    import ray

    connect(address)
    listed = ray.get(directory().endpoints.remote())
    by_app = {app_name(*_split(pool)): (pool, entries) for pool, entries in listed.items()}
    out = {}
    for app, s in sorted(_serve_status().applications.items()):
        if not app.startswith(APP_PREFIX):
            continue
        pool, entries = by_app.pop(app, (None, []))
        states: Dict[str, int] = {}
        for d in s.deployments.values():
            for state, n in d.replica_states.items():
                states[str(getattr(state, "value", state))] = states.get(str(getattr(state, "value", state)), 0) + n
        out[app] = {"status": str(getattr(s.status, "value", s.status)), "message": s.message,
                    "replicas": states, "pool": pool, "endpoints": entries}
    for app, (pool, entries) in by_app.items():  # heartbeats without an application: being deleted
        out[app] = {"status": "NOT_IN_SERVE", "message": "", "replicas": {}, "pool": pool, "endpoints": entries}
    return out


def _split(pool: str) -> Tuple[str, int]:
    name, _, version = pool.rpartition(":")
    return name, int(version)
