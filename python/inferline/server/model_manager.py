"""Keeps the engine serving what the registry says, and routes requests to versions.

Every poll interval the manager reads the registry and loads the live and
canary versions it does not serve yet (each loaded and warmed before it takes
traffic), then unloads versions that are no longer wanted (their queued
requests are drained first). A version that fails to load is recorded in the
registry and never replaces a working one: the model keeps answering from the
version that served before. A model is ready while any version of it serves.

All registry access and loading run on one worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Optional

from ..engine import Engine, ModelHandle
from ..errors import ModelNotFound
from ..models.service import load_version, open_registry

log = logging.getLogger("inferline.server")

SERVED_STATES = ("live", "canary")


class ModelManager:
    def __init__(self, engine: Engine, repository: Optional[str] = None, poll_interval_s: float = 2.0):
        self.engine = engine
        self.repository = repository
        self.poll_interval_s = poll_interval_s
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inferline-registry")
        self._registry = None
        self._lock = threading.Lock()
        self._served: dict = {}      # name -> {version: ModelHandle}
        self._route: dict = {}       # name -> version that "" (the live version) goes to
        self._records: dict = {}     # (name, version) -> VersionRecord
        self._failed: dict = {}      # (name, version) -> (sha256, reason)
        self._held: set = set()      # models unloaded on request: not reloaded by polling

    # ---- lookups (any thread) ----------------------------------------------
    def handle(self, name: str, version: str = "") -> ModelHandle:
        with self._lock:
            versions = self._served.get(name)
            if not versions:
                raise ModelNotFound(f"model {name!r} is not being served")
            if version in ("", None):
                return versions[self._route[name]]
            try:
                v = int(version)
            except ValueError:
                raise ModelNotFound(f"model {name!r}: version {version!r} is not a number") from None
            handle = versions.get(v)
            if handle is None:
                served = ", ".join(str(x) for x in sorted(versions))
                raise ModelNotFound(f"model {name!r} version {v} is not being served (serving: {served})")
            return handle

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.handle(name, version)
            return True
        except ModelNotFound:
            return False

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
        with self._lock:
            return [(n, v, self._route.get(n) == v) for n in sorted(self._served) for v in sorted(self._served[n])]

    def index(self) -> list:
        """Every version the registry knows, with its serving state (READY / UNAVAILABLE) and reason."""
        out = []
        with self._lock:
            for (name, version), rec in sorted(self._records.items()):
                serving = version in self._served.get(name, {})
                out.append({"name": name, "version": str(version), "state": "READY" if serving else "UNAVAILABLE",
                            "reason": "" if serving else self._version_reason(name, version)})
        return out

    # ---- changes (worker thread) --------------------------------------------
    async def sync(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._sync)

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
        if name not in self._served and name not in {n for n, _ in self._records}:
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
        if self._registry is None:
            self._registry = open_registry(self.repository)
        records = self._registry.list()
        by_name: dict = {}
        for r in records:
            by_name.setdefault(r.name, []).append(r)
        with self._lock:  # readers iterate it: replace it whole
            self._records = {(r.name, r.version): r for r in records}
        for name in set(by_name) | set(self._served):
            self._sync_model(name, by_name.get(name, []))

    def _sync_model(self, name: str, records: list) -> None:
        wanted = {} if name in self._held else {r.version: r for r in records if r.state in SERVED_STATES}
        for version, rec in sorted(wanted.items()):
            if version not in self._served.get(name, {}):
                self._load(rec)
        live = next((r.version for r in records if r.is_live), None)
        with self._lock:
            served = self._served.get(name, {})
            if live in served:
                self._route[name] = live
            elif self._route.get(name) not in served and served:
                self._route[name] = max(served)  # no working live version: any version that serves
            keep = set(wanted) | ({self._route[name]} if name in self._route and name not in self._held else set())
            gone = [v for v in served if v not in keep]
            handles = [served.pop(v) for v in gone]
            if not served:
                self._served.pop(name, None)
                self._route.pop(name, None)
        for h in handles:  # drained outside the lock: in-flight requests finish first
            self.engine.unload(h.name, h.version)
            log.info("unloaded %s:%s", h.name, h.version)

    def _load(self, rec) -> None:
        failed = self._failed.get((rec.name, rec.version))
        if failed and failed[0] == rec.sha256:
            return  # known to fail; not retried every poll
        try:
            handle, report = load_version(self.engine, self._registry, rec)
        except Exception as e:  # any failure: recorded, and the working version keeps serving
            with self._lock:
                self._failed[(rec.name, rec.version)] = (rec.sha256, str(e))
            log.error("version %s:%s failed to load: %s", rec.name, rec.version, e)
            return
        with self._lock:
            self._failed.pop((rec.name, rec.version), None)
            self._served.setdefault(rec.name, {})[rec.version] = handle
            self._route.setdefault(rec.name, rec.version)
        log.info("loaded %s:%s in %.2f s", rec.name, rec.version, report.model_load_time_s)
