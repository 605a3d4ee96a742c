"""The data plane: what every frontend (gRPC, REST) asks of the server, protocol-free.

A frontend converts its wire format to ``types.InferRequest`` and back; this
class adapts it to the in-process ``Service`` (which routes and runs it through
the core's router: fallbacks, breakers, cache) and answers who produced the
outputs. The model manager answers readiness, the repository index and
load/unload; control calls are authorized here, once. Errors are
``inferline.errors`` classes, mapped to gRPC codes and HTTP statuses in one
place by each frontend.

Rollout admin (canary and shadow) calls ``rollout.lifecycle`` off the event loop, on the
manager's registry thread, then syncs so that this server applies the change at once (the other
servers on the registry at their next poll). A canary start that runs the load-test gate (seconds
of load on the candidate, in an isolated engine of this process) runs on a thread of its own
with its own registry connection, so that the manager's polls go on meanwhile. Label feedback
goes to the Service.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from random import random as _random
from typing import Any, Callable, Iterable, Optional

from .. import __version__
from .admission import Admission
from .codec import NUMPY_TO_KSERVE
from .frontend_stats import FrontendStats
from ..errors import InvalidArgument, ModelNotFound, PermissionDenied, Unauthenticated, Unimplemented
from ..models.service import open_registry
from ..rollout import lifecycle
from ..routing import Router
from ..service import Service
from ..service.sync import ModelManager
from .types import InferOutput, InferRequest, InferResponse

log = logging.getLogger("inferline.server")

EXTENSIONS = ["model_repository", "schedule_policy", "model_configuration", "statistics", "parameters",
              "binary_tensor_data"]
# Triton's platform names, in model metadata and config alike.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}


def kserve_priority_to_level(priority: int, levels: int) -> int:
    """KServe/Triton priority (0 = default, 1 = highest, larger = lower) -> core level (higher first)."""
    if priority <= 0:
        return 0
    return max(0, levels - int(priority))


class DataPlane:
    """`admin_token`: the bearer token repository control needs. Without one, control is open only
    when `open_control` (the server listens on loopback only) and refused otherwise. `router`:
    where requests are routed (default: the manager's)."""

    def __init__(self, models: ModelManager, name: str = "inferline", *, admin_token: Optional[str] = None,
                 open_control: bool = True, router: Optional[Router] = None,
                 admission: Optional[Admission] = None):
        self.models = models
        self.router = router if router is not None else models.router
        self.service = Service(manager=models)
        """The in-process service that every frontend adapts: routing and running requests."""
        self.name = name
        self.admission = admission if admission is not None else Admission()
        """This worker's bound on inference requests in flight; frontends admit before decoding."""
        self._accepting = True
        self._on_accepting: list = []
        self._on_sync: list = []
        self._admin = admin_token.encode() if admin_token else None
        self._open_control = open_control
        self.inference_log = None
        """The worker's ``inferlog.InferenceLog`` (its server sets it), or None: no inference log."""
        self.frontend_stats = FrontendStats(lambda: (n for n, _v, _live in self.router.served()))
        """Decode/encode times and errors the frontends count (read by the metrics at scrape time)."""

    @classmethod
    def for_settings(cls, models: ModelManager, settings, router: Optional[Router] = None) -> "DataPlane":
        """The data plane a server with `settings` (a ServerSettings) answers from."""
        return cls(models, admin_token=settings.admin_token, open_control=settings.loopback_only, router=router,
                   admission=Admission(settings.admission_limit, target_ms=settings.admission_target_ms))

    # ---- serving state and syncs -------------------------------------------------
    @property
    def accepting(self) -> bool:
        """False while shutting down: ready turns false, live stays true (set from any thread;
        ``on_accepting`` listeners hear it, e.g. the native gRPC frontend's own readiness)."""
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self._accepting = bool(value)
        for listener in list(self._on_accepting):
            listener(self._accepting)

    def on_accepting(self, listener: Callable[[bool], None]) -> None:
        self._on_accepting.append(listener)

    def on_sync(self, listener: Callable[[], None]) -> None:
        """`listener()` runs on the event loop after every model-manager sync this server makes
        (polls, repository load/unload, rollout changes): what serves may have changed."""
        self._on_sync.append(listener)

    def _synced(self) -> None:
        for listener in list(self._on_sync):
            try:
                listener()
            except Exception:
                log.exception("a listener of model syncs failed")

    async def poll(self, stop: asyncio.Event) -> None:
        """Polls the registry (ModelManager.sync) every poll interval until `stop` is set."""
        while not stop.is_set():
            try:
                await self.models.sync()
            except Exception:  # a registry hiccup must not stop serving
                log.exception("registry poll failed")
            self._synced()
            try:
                await asyncio.wait_for(stop.wait(), self.models.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    # ---- health and metadata ------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Accepting, and for a pinned server (``--pin``, a pool replica) serving its one version."""
        pin = getattr(self.models, "pin", None)
        return self.accepting and (pin is None or self.models.ready(pin[0], str(pin[1])))

    def server_metadata(self) -> dict:
        return {"name": self.name, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.accepting and self.models.ready(name, version)

    def model_readiness(self, name: str, version: str = "") -> tuple:
        """(ready, reason); ModelNotFound for a model or version nobody knows."""
        ready, reason = self.models.readiness(name, version)
        if ready and not self.accepting:
            return False, "the server is shutting down"
        return ready, reason

    def model_metadata(self, name: str, version: str = "") -> dict:
        handle = self.router.route(name, version)
        cfg = handle.config
        versions = [str(v) for n, v, _ in self.router.served() if n == name]
        return {"name": cfg.name, "versions": versions, "platform": self._platform(handle),
                "inputs": [_tensor_meta(s) for s in cfg.inputs], "outputs": [_tensor_meta(s) for s in cfg.outputs]}

    def model_config(self, name: str, version: str = "") -> dict:
        """The Triton ModelConfig fields that tools (perf_analyzer) read, as plain data."""
        handle = self.router.route(name, version)
        cfg = handle.config
        b = cfg.batching
        platform = self._platform(handle)
        return {
            "name": cfg.name, "platform": platform, "backend": platform.split("_")[0],
            "max_batch_size": b.max_batch_size,
            "input": [{"name": s.name, "data_type": "TYPE_" + NUMPY_TO_KSERVE[s.dtype], "dims": list(s.shape[1:])}
                      for s in cfg.inputs],
            "output": [{"name": s.name, "data_type": "TYPE_" + NUMPY_TO_KSERVE[s.dtype], "dims": list(s.shape[1:])}
                       for s in cfg.outputs],
            "dynamic_batching": {"preferred_batch_size": list(b.preferred_batch_sizes),
                                 "max_queue_delay_microseconds": b.max_queue_delay_us,
                                 "priority_levels": cfg.priority_levels},
            "instance_group": [{"count": cfg.instances, "kind": "KIND_CPU"}],
        }

    def model_statistics(self, name: str = "", version: str = "") -> list:
        targets = [(n, v) for n, v, _ in self.router.served() if not name or n == name]
        if name and version:
            self.router.route(name, version)
            targets = [(name, int(version))]
        elif name and not targets:
            raise ModelNotFound(f"model {name!r} is not being served")
        return [_statistics(self.router.route(n, str(v))) for n, v in targets]

    def repository_index(self, ready_only: bool = False) -> list:
        index = self.models.index()
        return [m for m in index if m["state"] == "READY"] if ready_only else index

    async def repository_load(self, name: str, parameters: Iterable[str] = (), *,
                              authorization: Optional[str] = None) -> None:
        """`parameters`: the names of the request's load parameters; `authorization`: the caller's
        'Authorization' header (REST) or metadata (gRPC) value."""
        self.authorize(authorization, f"load {name!r}")
        _require_name(name, "load")
        if any(k == "config" or k.startswith("file:") for k in parameters):
            raise Unimplemented(f"load {name!r}: loading a config or files sent over the wire is not supported; "
                                f"push the package with `inferline models push` and load it by name")
        try:
            await self.models.load_model(name)
        finally:
            self._synced()

    async def repository_unload(self, name: str, *, authorization: Optional[str] = None) -> None:
        self.authorize(authorization, f"unload {name!r}")
        _require_name(name, "unload")
        try:
            await self.models.unload_model(name)
        finally:
            self._synced()

    # ---- rollouts (admin) and label feedback --------------------------------------
    async def canary_start(self, name: str, version: Any, *, steps: Any = lifecycle.DEFAULT_STEPS,
                           interval: Any = lifecycle.DEFAULT_INTERVAL_S, hold: bool = False,
                           skip_gate: bool = False, gate_seconds: Optional[float] = None,
                           authorization: Optional[str] = None) -> dict:
        """Starts a canary (``lifecycle.start_canary``); the rollout as data, with ``gate``: the
        gate's result (or why it was skipped). `steps`: a list or "5,10"; `interval`: seconds or
        "60s"."""
        self.authorize(authorization, f"canary start {name!r}")
        _require_name(name, "canary start")

        def start(registry) -> dict:
            rollout = lifecycle.start_canary(registry, name, version, steps=steps, interval_s=interval, hold=hold,
                                             skip_gate=skip_gate, gate_seconds=gate_seconds)
            return dict(rollout.to_dict(), gate=_start_evidence(registry, rollout).get("gate"))

        out = await (self._on_registry(start) if skip_gate else self._on_own_registry(start))
        await self._apply()
        return out

    async def canary_status(self, name: str, *, authorization: Optional[str] = None) -> dict:
        """``lifecycle.canary_status``: the rollout, its current window, the shadow, the history."""
        self.authorize(authorization, f"canary status {name!r}")
        _require_name(name, "canary status")
        return await self._on_registry(lambda registry: lifecycle.canary_status(registry, name))

    async def canary_promote(self, name: str, *, authorization: Optional[str] = None) -> dict:
        self.authorize(authorization, f"canary promote {name!r}")
        _require_name(name, "canary promote")
        return await self._change(lambda registry: lifecycle.promote_canary(registry, name).to_dict())

    async def canary_abort(self, name: str, *, authorization: Optional[str] = None) -> dict:
        self.authorize(authorization, f"canary abort {name!r}")
        _require_name(name, "canary abort")
        return await self._change(lambda registry: lifecycle.abort_canary(registry, name).to_dict())

    async def shadow_start(self, name: str, version: Any, share: Any = 100.0, *,
                           authorization: Optional[str] = None) -> dict:
        self.authorize(authorization, f"shadow start {name!r}")
        _require_name(name, "shadow start")
        return await self._change(lambda registry: lifecycle.start_shadow(registry, name, version, share).to_dict())

    async def shadow_stop(self, name: str, *, authorization: Optional[str] = None) -> dict:
        self.authorize(authorization, f"shadow stop {name!r}")
        _require_name(name, "shadow stop")
        return await self._change(lambda registry: lifecycle.stop_shadow(registry, name).to_dict())

    async def feedback(self, name: str, labels: Any) -> dict:
        """True labels of earlier requests (``Service.feedback``); open to any client that may infer:
        {"accepted", "unknown", "unknown_ids"}."""
        _require_name(name, "feedback")
        return await asyncio.get_running_loop().run_in_executor(None, self.service.feedback, name, labels)

    async def _change(self, fn: Callable) -> dict:
        out = await self._on_registry(fn)
        await self._apply()
        return out

    async def _on_registry(self, fn: Callable):
        """``fn(registry)`` on the manager's registry thread, awaited from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.models.run_on_registry, fn)

    async def _on_own_registry(self, fn: Callable):
        """``fn(registry)`` on a thread of its own with its own registry connection (for the gate:
        seconds of work that must not hold up the manager's polls)."""
        def call():
            registry = open_registry(self.models.repository)
            try:
                return fn(registry)
            finally:
                registry.close()
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def _apply(self) -> None:
        """A sync now, so that this server serves the change at once (the change is stored: a
        failed sync is logged and the next poll retries it)."""
        try:
            await self.models.sync()
        except Exception:
            log.exception("sync after a rollout change failed; the next poll retries")
        self._synced()

    def authorize(self, authorization: Optional[str], call: str) -> None:
        """The one check for control calls: a matching bearer token, or an open loopback-only server."""
        if self._admin is None:
            if self._open_control:
                return
            raise PermissionDenied(f"{call}: repository control is disabled because this server listens beyond "
                                   f"loopback without an admin token (start it with --admin-token)")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._admin):
            raise Unauthenticated(f"{call}: requires 'Authorization: Bearer <admin token>'")

    # ---- inference ------------------------------------------------------------
    async def infer(self, req: InferRequest) -> InferResponse:
        """Wire request -> the Service (which routes and runs it) -> wire response naming who answered."""
        t0 = time.perf_counter()
        version = int(req.model_version) if req.model_version.isdigit() else req.model_version or None
        cfg = self.service.config(req.model_name, version)
        inputs = self._inputs(req, cfg)
        names = self._requested_outputs(req, cfg)
        level = kserve_priority_to_level(req.priority, cfg.priority_levels)
        answer = await self.service.infer_async(req.model_name, inputs, version=version, routing_key=req.routing_key,
                                                priority=level, timeout_us=req.timeout_us, request_id=req.id or None,
                                                cancellable=True)
        result = answer.outputs
        outputs = [InferOutput(n, NUMPY_TO_KSERVE[result[n].dtype.name], list(result[n].shape), result[n])
                   for n in names]
        if self.inference_log is not None and _random() < cfg.logging.sample_rate:  # sampled: kept off the path
            self.inference_log.sample(req.model_name, req.id, inputs, answer, t0)
        params = {"routed_to": answer.routed_to}
        if answer.fallback_reason:
            params["fallback_reason"] = answer.fallback_reason
        return InferResponse(answer.model, str(answer.version), req.id, outputs, params)

    @staticmethod
    def _inputs(req: InferRequest, cfg) -> dict:
        """The request's tensors by name. Names, dtypes and shapes are checked once, by the core
        (through the engine), against the signature; only a name given twice is refused here,
        since a mapping cannot hold it."""
        inputs = {inp.name: inp.data for inp in req.inputs}
        if len(inputs) != len(req.inputs):
            seen: set = set()
            twice = next(inp.name for inp in req.inputs if inp.name in seen or seen.add(inp.name))
            raise InvalidArgument(f"{cfg.where} input {twice!r}: given twice")
        return inputs

    @staticmethod
    def _requested_outputs(req: InferRequest, cfg) -> list:
        if not req.outputs:
            return list(cfg.output_names)
        for n in req.outputs:
            if n not in cfg.output_names:
                raise InvalidArgument(f"{cfg.where}: unknown output {n!r} (outputs: {', '.join(cfg.output_names)})")
        return list(req.outputs)

    def _platform(self, handle) -> str:
        rec = self.models.record(handle.name, handle.version)
        backend = (rec.config.get("backend") or {}).get("name", "onnxruntime") if rec else "python"
        return PLATFORMS.get(backend, "python")


def _require_name(name: str, call: str) -> None:
    if not name:
        raise InvalidArgument(f"{call}: a model name is required")


def _start_evidence(registry, rollout) -> dict:
    """The evidence recorded with a rollout's start event (the gate's result is there)."""
    for e in reversed(registry.rollouts.history(rollout.name, 20)):
        if e.rollout_id == rollout.id and e.action == "start":
            return e.evidence
    return {}


def _tensor_meta(spec) -> dict:
    return {"name": spec.name, "datatype": NUMPY_TO_KSERVE[spec.dtype], "shape": list(spec.shape)}


def _statistics(handle) -> dict:
    s = handle.stats()

    def duration(count, hist):
        return {"count": int(count), "ns": int(hist["mean"] * hist["count"] * 1000)}

    return {
        "name": handle.name, "version": str(handle.version), "last_inference": s["last_inference_ms"],
        "inference_count": s["rows"], "execution_count": s["batches"],
        "inference_stats": {
            "success": duration(s["end_to_end_us"]["count"], s["end_to_end_us"]),
            "fail": {"count": s["errors"] + s["deadline_missed"] + s["rejected"], "ns": 0},
            "queue": duration(s["queue_us"]["count"], s["queue_us"]),
            "compute_infer": duration(s["compute_us"]["count"], s["compute_us"]),
        },
        "batch_stats": [{"batch_size": size, "compute_infer": {"count": n, "ns": 0}}
                        for size, n in enumerate(s["batch_size_counts"]) if n],
    }
