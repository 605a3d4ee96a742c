"""Keeps the engine serving what the registry says, and publishes the routing snapshot.

Every poll interval the manager (the routing controller) reads the registry and loads the live
and canary versions that the engine does not hold yet (each loaded and warmed before it takes
traffic), publishes the new routing snapshot to the ``Router``, then unloads versions that are
no longer wanted (their queued requests are drained first; new requests already route
elsewhere). A version that fails to load is recorded in the registry and never replaces a
working one: the model keeps answering from the version that served before. A model is ready
while any version of it serves. Which version a request reaches is the Router's job
(``inferline.routing``); what is loaded is the engine's (``engine.models()``).

Rollouts (``inferline.rollout``): a model with an active canary gets arms in its core policy
(the canary's weight of the hash buckets, sticky) and the canary's chain starts with the stable
version; a shadow version is loaded beside the live one. After each publish the manager hands the
recorder its watches, writes the recorder's counts and the routed-request counts (the gate's
observed peak) to the registry, and ticks this process's canary controller.

Locking: all registry access, loading and publishing run on one worker thread, off the event
loop. ``_lock`` guards ``_records`` and ``_failed`` (read by readiness and the index from any
thread); it is never held during a load, an unload or a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from ..config import CanaryConfig
from ..engine import Engine, ModelHandle
from ..errors import LoadDeferred, ModelNotFound
from ..models.service import load_version, open_registry
from ..rollout.arms import arms as canary_arms, canary_chain, mirror_share, watches as make_watches
from ..rollout.controller import Controller, thresholds
from ..rollout.recorder import Recorder
from ..routing import ModelRoutes, Router, RoutingSnapshot, build_policies

log = logging.getLogger("inferline.service")

SERVED_STATES = ("live", "canary")
PREDICTIONS_KEPT_S = 7 * 24 * 3600.0
"""How long predictions recorded for label feedback (and their labels) are kept."""


class ModelManager:
    def __init__(self, engine: Engine, repository: Optional[str] = None, poll_interval_s: float = 2.0,
                 router: Optional[Router] = None, pin: Optional[tuple] = None, loader=None):
        self.engine = engine
        self.pin = pin
        """(name, version): serve that version only, as its model's route, whatever its registry state,
        without rollouts or fallbacks (a pool replica behind a gateway); None: the registry's choice."""
        self._load_version = loader or load_version
        """``(engine, registry, record) -> (handle, LoadReport)``: how a wanted version is loaded (a
        gateway loads a forwarder to the version's pool instead of the artifact)."""
        self.pools = None
        """A gateway's ``PoolSet`` (its metrics endpoint reports the pools), else None."""
        self.repository = repository
        self.poll_interval_s = poll_interval_s
        self.router = router if router is not None else Router(engine)
        """Where the manager publishes the routing snapshot; the data plane routes through it."""
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inferline-registry")
        self._registry = None
        self._lock = threading.Lock()
        self._records: dict = {}     # (name, version) -> VersionRecord
        self._failed: dict = {}      # (name, version) -> (sha256, reason)
        self._held: set = set()      # models unloaded on request: not reloaded by polling
        self._published: set = set()  # models with a policy in the core router
        self._fallback_only: dict = {}  # model without a serving version -> its live version's chain
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This process's name in the registry: lease holder, counts of its share of the traffic."""
        self.recorder = Recorder(engine)
        """Per-arm counts, mirrored pairs and predictions of this process's requests."""
        self.controller = Controller(self.worker_id, lease_ttl_s=max(10.0, 5 * poll_interval_s))
        """This process's canary controller (acts for the models whose lease it holds)."""
        self._rollouts: dict = {}  # model -> its active Rollout
        self._shadows: dict = {}   # model -> its Shadow
        self._routed: dict = {}    # model -> routed requests counted at the last flush
        self._pruned_at = 0.0

    # ---- lookups (any thread) ----------------------------------------------
    def handle(self, name: str, version: str = "") -> ModelHandle:
        """The handle a request for ``name``/``version`` reaches (asks the router)."""
        return self.router.route(name, version)

    def ready(self, name: str, version: str = "") -> bool:
        return self.router.ready(name, version)

    def readiness(self, name: str, version: str = "") -> tuple:
        """(ready, reason): why a model (or one version of it) is not serving, in words.

        Raises ModelNotFound when neither the registry nor the server knows it.
        """
        if self.ready(name, version):
            return True, ""
        with self._lock:
            known = sorted(v for n, v in self._records if n == name)
            if not known:
                raise ModelNotFound(f"model {name!r} is not in the repository")
            if version in ("", None):
                if name in self._held:
                    return False, "unloaded by request (a repository load serves it again)"
                live = next((v for (n, v), r in self._records.items() if n == name and r.is_live), None)
                if live is None:
                    return False, "no live version in the repository"
                return False, self._version_reason(name, live)
            try:
                v = int(version)
            except ValueError:
                raise ModelNotFound(f"model {name!r}: version {version!r} is not a number") from None
            if v not in known:
                raise ModelNotFound(f"model {name!r} has no version {v} (versions: {', '.join(map(str, known))})")
            return False, self._version_reason(name, v)

    # requires _lock
    def _version_reason(self, name: str, version: int) -> str:
        if name in self._held:
            return "unloaded by request (a repository load serves it again)"
        failed = self._failed.get((name, version))
        if failed:
            return f"failed to load: {failed[1]}"
        state = self._records[(name, version)].state
        if state in SERVED_STATES:
            return "loading"
        return f"version {version} is {state}; only live and canary versions are served"

    def record(self, name: str, version: int):
        return self._records.get((name, version))  # one dict read: atomic, no lock needed

    def served(self) -> list:
        """[(name, version, is_routed)] of every version being served."""
        return self.router.served()

    def index(self) -> list:
        """Every version the registry knows, with its serving state (READY / UNAVAILABLE) and reason."""
        routes = self.router.snapshot.models
        out = []
        with self._lock:
            for (name, version), rec in sorted(self._records.items()):
                serving = name in routes and version in routes[name].served
                out.append({"name": name, "version": str(version), "state": "READY" if serving else "UNAVAILABLE",
                            "reason": "" if serving else self._version_reason(name, version)})
        return out

    # ---- changes (worker thread) --------------------------------------------
    async def sync(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._sync)

    def sync_blocking(self) -> None:
        """One reconciliation now, from a thread that is not the worker (the in-process Service)."""
        self._worker.submit(self._sync).result()

    async def load_model(self, name: str) -> None:
        """RepositoryModelLoad: serve `name` again (its live/canary versions) now."""
        self._held.discard(name)
        await self.sync()
        if not self.ready(name):
            with self._lock:
                reasons = [r for (n, _), (_, r) in self._failed.items() if n == name]
            raise ModelNotFound(f"model {name!r} could not be loaded" + (f": {reasons[-1]}" if reasons else
                                                                           " (no live version in the registry)"))

    async def unload_model(self, name: str) -> None:
        """RepositoryModelUnload: stop serving every version of `name` (queued requests are answered)."""
        if name not in self.router.snapshot.models and name not in {n for n, _ in self._records}:
            raise ModelNotFound(f"model {name!r} is not in the repository")
        self._held.add(name)
        await self.sync()

    async def run(self, stop: asyncio.Event) -> None:
        """Polls the registry until `stop` is set."""
        while not stop.is_set():
            try:
                await self.sync()
            except Exception:  # a registry hiccup must not stop serving
                log.exception("registry poll failed")
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        if self._registry is not None:
            self._registry.close()

    def _sync(self) -> None:
        """One reconciliation (worker thread): load what is wanted, publish, then unload the rest."""
        if self._registry is None:
            self._registry = open_registry(self.repository)
        records = self._registry.list()
        if self.pin is not None:
            records = _pinned(records, self.pin)
        by_name: dict = {}
        for r in records:
            by_name.setdefault(r.name, []).append(r)
        with self._lock:  # readers iterate it: replace it whole
            self._records = {(r.name, r.version): r for r in records}
        self._read_rollouts()
        previous = self.router.snapshot
        routes, retired = [], []
        for name in sorted(set(by_name) | set(previous.models)):
            model_routes, gone = self._sync_model(name, by_name.get(name, []), previous.models.get(name))
            routes.append(model_routes)
            retired.extend((name, v) for v in gone)
        snapshot = RoutingSnapshot.build(previous.epoch + 1, routes)
        self.router.publish(snapshot)
        self._publish_policies(snapshot, records, previous)
        self._publish_watches(snapshot, records)
        for name, version in retired:  # after the publish: no new request reaches them; queued ones drain
            self.engine.unload(name, version)
            log.info("unloaded %s:%s", name, version)
        self._after_publish()

    def _read_rollouts(self) -> None:
        """The registry's active rollouts and shadows (kept as they were when it cannot answer)."""
        if self.pin is not None:
            return  # a pinned replica serves its one version; the gateway runs the rollout
        try:
            self._rollouts = {r.name: r for r in self._registry.rollouts.list_active()}
            self._shadows = {s.name: s for s in self._registry.rollouts.shadows()}
        except Exception:
            log.exception("reading rollouts failed")

    def _publish_watches(self, snapshot: RoutingSnapshot, records: list) -> None:
        live = {r.name: r.version for r in records if r.is_live}
        served = {name: routes.served for name, routes in snapshot.models.items()}
        mirror, caps = {}, {}
        default = CanaryConfig().max_copies_per_s
        for name, r in self._rollouts.items():
            rec = self._records.get((name, r.version))
            canary = thresholds(rec)[0] if rec is not None else CanaryConfig()
            mirror[name] = mirror_share(canary.mirror_share, r.weight)
            caps[name] = (canary.max_copies_per_s, default)
        for name, s in self._shadows.items():
            rec = self._records.get((name, s.version))
            shadow_cap = thresholds(rec)[0].max_copies_per_s if rec is not None else default
            caps[name] = (caps.get(name, (default, default))[0], shadow_cap)
        self.recorder.publish(make_watches(self._rollouts, self._shadows, live, served, mirror, caps))

    def _after_publish(self) -> None:
        """Shares this process's view with the other workers and controllers, then lets this
        process's controller decide; a failure is logged and retried at the next poll."""
        if self.pin is not None:
            return  # the gateway in front of a pinned replica counts the traffic and runs the controller
        try:
            self.recorder.flush(self._registry, self.worker_id)
            minute = int(time.time() // 60)
            for name in list(self._published):
                try:
                    requests = self.engine.routing_stats(name)["requests"]
                except ModelNotFound:
                    continue
                delta = requests - self._routed.get(name, requests)
                self._routed[name] = requests
                if delta > 0:
                    self._registry.rollouts.add_traffic(name, minute, self.worker_id, delta)
            if self._rollouts:
                self.controller.tick(self._registry)
            now = time.time()
            if now - self._pruned_at > 3600:  # recorded predictions and labels are kept a week
                self._pruned_at = now
                self._registry.rollouts.prune_predictions(now - PREDICTIONS_KEPT_S)
        except Exception:
            log.exception("rollout bookkeeping failed")

    def run_on_registry(self, fn):
        """``fn(registry)`` on the registry thread (blocking): for calls that share its connection."""
        def call():
            if self._registry is None:
                self._registry = open_registry(self.repository)
            return fn(self._registry)
        return self._worker.submit(call).result()

    def _publish_policies(self, snapshot: RoutingSnapshot, records: list, previous: RoutingSnapshot) -> None:
        """Hands each served model's policy (its route, and per served version the fallback chain,
        breaker and cache from the registry) to the core, which applies it to every request; a
        model no longer served loses its policy. A policy the core refuses is logged and the
        model keeps its previous one."""
        policies = build_policies(records)
        wanted = {name: core_policy(routes, policies.get(name), snapshot.epoch, self._rollouts.get(name))
                  for name, routes in snapshot.models.items()}
        fallback_only = {}
        for name, policy in policies.items():  # nothing serves, but the live version has a fallback
            if name not in wanted and name not in self._held and policy.live in policy.versions:
                chain = policy.versions[policy.live].fallback
                if chain:
                    wanted[name] = core_policy(ModelRoutes(name, policy.live, (policy.live,)), policy, snapshot.epoch)
                    fallback_only[name] = [(link.model, link.version) for link in chain]
        self._fallback_only = fallback_only
        for name, core in wanted.items():
            try:
                self.engine.publish_policy(name, core)
                self._published.add(name)
            except Exception as e:  # e.g. a cycle closed by a promote: keep serving as before
                log.error("routing policy of %s refused: %s", name, e)
        for name in self._published - set(wanted):
            try:
                self.engine.remove_policy(name)
            except ModelNotFound:
                pass
            self._published.discard(name)

    def fallback_config(self, name: str):
        """For a model none of whose versions serves but whose live version has a fallback: the
        config of the first link that serves (requests for it are answered there, reason
        "unavailable"); else None."""
        for model, version in self._fallback_only.get(name, ()):
            try:
                return self.engine.model(model, version).config
            except ModelNotFound:
                continue
        return None

    def _sync_model(self, name: str, records: list, before: Optional[ModelRoutes]) -> tuple:
        """(this model's routes, versions to unload): loads the wanted versions the engine lacks,
        routes "" to the live version if it serves, else to what served before, else the newest."""
        held = name in self._held
        wanted = {} if held else {r.version: r for r in records if r.state in SERVED_STATES}
        shadow = self._shadows.get(name)
        if shadow is not None and not held:
            wanted.update({r.version: r for r in records if r.version == shadow.version and r.state != "failed"})
        for version, rec in sorted(wanted.items()):
            if version not in self._loaded(name):
                self._load(rec)
        loaded = self._loaded(name)
        live = next((r.version for r in records if r.is_live), None)
        route = _choose_route(live, loaded, before.live if before else None)
        keep = set() if held else set(wanted) | ({route} if route is not None else set())
        served = tuple(v for v in sorted(loaded) if v in keep)
        gone = [v for v in sorted(loaded) if v not in keep]
        if route not in served:
            route = max(served) if served else None
        return ModelRoutes(name, route, served), gone

    def _loaded(self, name: str) -> set:
        """The versions of ``name`` that the engine holds (the engine is the one owner of that)."""
        return {v for n, v in self.engine.models() if n == name}

    def _load(self, rec) -> None:
        """Loads one version (worker thread); a failure is recorded and never replaces a working
        version. The loaded version takes traffic once the next snapshot is published."""
        failed = self._failed.get((rec.name, rec.version))
        if failed and failed[0] == rec.sha256:
            return  # known to fail; not retried every poll
        try:
            _, report = self._load_version(self.engine, self._registry, rec)
        except LoadDeferred as e:  # not a failure: tried again at the next poll
            log.info("version %s:%s not loaded yet: %s", rec.name, rec.version, e)
            return
        except Exception as e:  # any failure: recorded, and the working version keeps serving
            with self._lock:
                self._failed[(rec.name, rec.version)] = (rec.sha256, str(e))
            log.error("version %s:%s failed to load: %s", rec.name, rec.version, e)
            return
        with self._lock:
            self._failed.pop((rec.name, rec.version), None)
        log.info("loaded %s:%s in %.2f s", rec.name, rec.version, report.model_load_time_s)


def _pinned(records: list, pin: tuple) -> list:
    """The pinned version alone, as its model's live version without a fallback, whatever its state (a
    retired version keeps serving while a gateway drains its pool)."""
    name, version = pin
    return [dataclasses.replace(r, state="live", is_live=True, fallback_id=None)
            for r in records if r.name == name and r.version == version]


def core_policy(routes: ModelRoutes, policy, epoch: int, rollout=None) -> dict:
    """The core policy of one model: requests go to the version the manager routes to (the live
    one, or what served before when the live one failed to load); each served version keeps its
    registry policy (fallback chain, breaker, cache), a version without one gets none. With an
    active ``rollout`` whose canary serves, the canary owns its weight of the buckets (``arms``)
    and its chain starts with the routed version."""
    by_version = {v["version"]: v for v in (policy.to_core()["versions"] if policy else [])}
    versions = [by_version.get(v, {"version": v, "chain": [], "breaker": None, "cache_bytes": 0,
                                   "cache_last_resort": False}) for v in routes.served]
    core = {"name": routes.name, "epoch": epoch, "live": routes.live, "served": list(routes.served),
            "versions": versions}
    if rollout is not None and rollout.version in routes.served and routes.live not in (None, rollout.version):
        core["arms"] = canary_arms(routes.live, rollout.version, rollout.weight)
        for v in versions:
            if v["version"] == rollout.version:
                v["chain"] = canary_chain(routes.name, routes.live, v["chain"])
    return core


def _choose_route(live: Optional[int], loaded: set, before: Optional[int]) -> Optional[int]:
    """Where "" goes: the live version if the engine holds it, else the version that was routed
    before (a live version that failed to load never replaces it), else the newest loaded one."""
    if live in loaded:
        return live
    if before in loaded:
        return before
    return max(loaded) if loaded else None
