"""Engine: the in-process API, a thin facade over the native core's Engine.

    engine = Engine()
    model = engine.load(config, backend)         # one native scheduler per version
    y = engine.infer("digits", {"x": rows})      # blocking
    f = engine.submit("digits", {"x": rows})     # concurrent.futures.Future
    y = await engine.infer_async("digits", {"x": rows})
    engine.replace(config, new_backend)          # hot reload of a loaded version, no gap

    engine.publish_policy("digits", policy.to_core())      # routing with fallback, in the core
    r = engine.infer_routed("digits", {"x": rows})         # RoutedResult(outputs, model, version, reason)

What is loaded lives in the core (``_core.Engine``, the one (name, version) ->
model map); this module converts arguments and maps errors. Loading a version
that is loaded is refused (AlreadyExists); ``replace`` swaps it atomically. The
core checks inputs (dtypes, shapes, rows) before they reach the queue; errors
are ``inferline.errors`` classes whose message names the model, version and
input at fault. Each result is ``{output name: array}``; the arrays are views of
the batch output shared with the other requests of the batch (no copy).

Routed requests (``submit_routed``, ``infer_routed``, ``infer_routed_async``) go
through the core's Router (router.h): a model with a published policy
(``publish_policy``) is routed by its arms and falls back along its chains; a
model without one passes straight to the engine. Every version a policy can
send a request to must take the inputs (names, dtypes, shapes) of the version
the request was converted for (the policy's default arm, or the explicit
version): the core refuses a primary, and skips a fallback link, that differs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any, Mapping, Optional

from .. import _core
from ..backends import as_backend
from ..backends.gpu import gpu_device
from ..config import ModelConfig
from ..errors import InvalidArgument, from_core_error
from ..errors import Unavailable
from .dispatch import LoopDispatcher, RoutedResult, ThreadDispatcher
from .gpu_memory import GpuMemoryBudget


_MAX_TIMEOUT_US = 2**63 - 1  # the core saturates the deadline there: far enough = none in practice


class ModelHandle:
    """One loaded model version, named by (name, version): infer/submit/infer_async/stats.

    The engine owns the version; a handle only names it. Requests go to whatever
    model serves (name, version) now: after ``Engine.replace`` (same signature)
    the handle serves the replacement, after ``unload`` it raises ModelNotFound.
    ``config`` is the version's config when the handle was made.
    """

    def __init__(self, engine: "Engine", config: ModelConfig):
        self.config = config
        self.name = config.name
        self.version = config.version
        self._engine = engine
        self._names = config.output_names
        self._single_input = config.inputs[0].name if len(config.inputs) == 1 else None

    def infer(self, inputs, *, priority: int = 0, timeout_us: Optional[int] = None) -> dict:
        return self.submit(inputs, priority=priority, timeout_us=timeout_us).result()

    def submit(self, inputs, *, priority: int = 0, timeout_us: Optional[int] = None):
        dispatcher = self._engine._thread_dispatcher()
        return self._submit(dispatcher, inputs, priority, timeout_us)

    async def infer_async(self, inputs, *, priority: int = 0, timeout_us: Optional[int] = None) -> dict:
        dispatcher = self._engine._loop_dispatcher(asyncio.get_running_loop())
        return await self._submit(dispatcher, inputs, priority, timeout_us)

    def submit_on_loop(self, inputs, *, priority: int = 0, timeout_us: Optional[int] = None) -> asyncio.Future:
        """An ``asyncio.Future`` of the outputs, resolved on the running loop (no task, no thread
        hop): for fire-and-forget work beside a request, e.g. a mirrored copy. Raises at once
        when the core refuses the request (a full queue)."""
        dispatcher = self._engine._loop_dispatcher(asyncio.get_running_loop())
        return self._submit(dispatcher, inputs, priority, timeout_us)

    def stats(self) -> dict:
        """The core's counters and histograms, plus ``last_inference_ms`` (Unix time in ms of the
        latest finished batch, 0 before the first)."""
        core = self._engine._core_model(self.name, self.version)
        s = core.stats()
        s["model"], s["version"] = self.name, self.version
        s["gpu_memory_bytes"] = self._engine._gpu_bytes(core, self.name, self.version)
        last = s["last_batch_end_us"]
        s["last_inference_ms"] = int(time.time() * 1000 - (core.now_us() - last) / 1000) if last else 0
        return s

    def gpu_memory(self) -> dict:
        """The core's own GPU buffers of this version: {"device", "device_bytes", "pinned_bytes"}
        (device -1 and zeros for a model on the CPU), plus "charged_bytes": what loading it was
        measured to take (engine/gpu_memory.py; None when it was not loaded through the loader)."""
        core = self._engine._core_model(self.name, self.version)
        info = getattr(core, "gpu_memory", None)
        out = dict(info()) if info is not None else {"device": -1, "device_bytes": 0, "pinned_bytes": 0}
        out["charged_bytes"] = self._engine.gpu_memory.charged(self.name, self.version)
        return out

    def reset_stats(self) -> None:
        """Zeroes this version's statistics; exact while no request is in flight. The loader
        calls it after warm-up, so that served traffic alone is counted."""
        self._engine._core_model(self.name, self.version).reset_stats()

    def _submit(self, dispatcher, inputs, priority, timeout_us):
        if type(inputs) is not dict:
            inputs = self._as_dict(inputs)
        # Relative: the core takes the deadline on its own clock (0 = none).
        timeout = 0 if timeout_us is None else min(max(int(timeout_us), 1), _MAX_TIMEOUT_US)
        try:
            return dispatcher.submit(self._engine._core, self.name, self.version, inputs, self._names,
                                     priority, timeout)
        except _core.CoreError as e:
            raise from_core_error(e) from None

    def _as_dict(self, inputs) -> dict:
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if self._single_input is not None:
            return {self._single_input: inputs}
        raise InvalidArgument(f"{self.config.where}: inputs must be a mapping of input name to array "
                              f"(inputs: {', '.join(self.config.input_names)})")


class Engine:
    """Loads model versions and serves requests to them in-process.

    `gpu_memory_budget`: bytes of GPU memory (per device) that loads through the loader
    (models/loader.py) may take together; None: no limit (loads are still measured)."""

    def __init__(self, *, gpu_memory_budget: Optional[int] = None):
        # Declared first so that models are shut down before the sinks they answer into.
        self._core = _core.Engine()
        self._lock = threading.Lock()  # guards the dispatchers and _closed
        self._thread: Optional[ThreadDispatcher] = None
        self._loops: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._sinks_alive: list = []  # every dispatcher ever made: its sink must outlive its requests
        self._router: Optional[Any] = None  # _core.Router, made on first use; dropped by close() first
        self._names: dict = {}  # (model, version) -> output names, for routed answers; reset by (re)loads
        self._closed = False
        self.gpu_memory = GpuMemoryBudget(gpu_memory_budget)
        """GPU memory charged to loaded versions, and the budget (engine/gpu_memory.py)."""

    # ---- model versions -------------------------------------------------------
    def load(self, config: Any, backend: Any) -> ModelHandle:
        """Starts serving one model version. `config` is a ModelConfig or a mapping.

        Raises AlreadyExists if that version is loaded: a hot reload is ``replace``.
        """
        config, native, device = self._prepare(config, backend)
        self._names.pop((config.name, config.version), None)
        try:
            self._core.load(config.to_core(device), native, config)
        except _core.CoreError as e:
            raise from_core_error(e) from None
        return ModelHandle(self, config)

    def replace(self, config: Any, backend: Any, *, drain: bool = True) -> ModelHandle:
        """Hot reload: serves `config`'s version from a new model, swapped in atomically (no
        request sees the version missing or refused), then shuts the old model down after
        answering its queued requests (computed when `drain`, else Cancelled). Loads the version
        if it is not loaded. FailedPrecondition if the inputs or outputs differ from the loaded
        version's (a new signature needs a new version); on any error the loaded version serves on.
        """
        config, native, device = self._prepare(config, backend)
        try:
            self._core.replace(config.to_core(device), native, config, drain)
        except _core.CoreError as e:
            raise from_core_error(e) from None
        return ModelHandle(self, config)

    def unload(self, name: str, version: Optional[int] = None, *, drain: bool = True) -> None:
        """Stops a version (the latest when None) after answering its queued requests."""
        try:
            self._core.unload(name, _version(version), drain)
        except _core.CoreError as e:
            raise from_core_error(e) from None
        self.gpu_memory.forget_unloaded(self._core.list())

    def model(self, name: str, version: Optional[int] = None) -> ModelHandle:
        """The loaded version (the latest when None); ModelNotFound names what is loaded."""
        return ModelHandle(self, self._core_model(name, version).host)

    def models(self) -> list:
        """[(name, version)] of every loaded version, sorted."""
        return self._core.list()

    # ---- inference ------------------------------------------------------------
    def infer(self, name: str, inputs, *, version: Optional[int] = None, priority: int = 0,
              timeout_us: Optional[int] = None) -> dict:
        return self.model(name, version).infer(inputs, priority=priority, timeout_us=timeout_us)

    def submit(self, name: str, inputs, *, version: Optional[int] = None, priority: int = 0,
               timeout_us: Optional[int] = None):
        return self.model(name, version).submit(inputs, priority=priority, timeout_us=timeout_us)

    async def infer_async(self, name: str, inputs, *, version: Optional[int] = None, priority: int = 0,
                          timeout_us: Optional[int] = None) -> dict:
        return await self.model(name, version).infer_async(inputs, priority=priority, timeout_us=timeout_us)

    def stats(self, name: str, version: Optional[int] = None) -> dict:
        return self.model(name, version).stats()

    # ---- routing (the core's Router) --------------------------------------------
    def publish_policy(self, model: str, policy: Any) -> None:
        """Routes ``model``'s routed requests by ``policy``: a ``routing.policy.ModelPolicy`` or its
        ``to_core()`` dict (optional extra keys: "epoch", "arms" [{"version", "lo", "hi"}] over
        10000 buckets, "fallback" [{"model", "version"}]). Swapped in whole; requests in flight
        keep the policy they started under. InvalidArgument names the field at fault (also a
        fallback cycle); FailedPrecondition when its epoch is older than the published one."""
        if hasattr(policy, "to_core"):
            policy = policy.to_core()
        self._call_router("publish", model, dict(policy))

    def remove_policy(self, model: str) -> None:
        """Stops routing ``model`` by policy (its routed requests pass straight to the engine);
        ModelNotFound if none was published."""
        self._call_router("remove", model)

    def routing_stats(self, model: str) -> dict:
        """The router's counters for ``model``: requests, answered_ok / _error / _by_fallback,
        cache_hits / _misses, fallbacks {reason: count}, epoch, and per version of the policy
        {version, primary, answered, failed, breaker (state or None), breaker_counters, cache}."""
        return self._call_router("stats", model)

    def submit_routed(self, model: str, inputs, *, version: Optional[int] = None, routing_key=None,
                      priority: int = 0, timeout_us: Optional[int] = None):
        """A ``concurrent.futures.Future`` of a ``RoutedResult``. ``version`` bypasses the arms (its
        chain still applies); ``routing_key`` (bytes or str) picks the arm, else the inputs do."""
        return self._submit_routed(self._thread_dispatcher(), model, inputs, version, routing_key, priority,
                                   timeout_us)

    def infer_routed(self, model: str, inputs, **kw) -> RoutedResult:
        """``submit_routed(...).result()``."""
        return self.submit_routed(model, inputs, **kw).result()

    async def infer_routed_async(self, model: str, inputs, *, version: Optional[int] = None, routing_key=None,
                                 priority: int = 0, timeout_us: Optional[int] = None,
                                 cancellable: bool = False) -> RoutedResult:
        """``cancellable``: cancelling the awaiting task withdraws the request from the core's
        queue, so it is never computed if its batch has not run (for callers that go away)."""
        dispatcher = self._loop_dispatcher(asyncio.get_running_loop())
        return await self._submit_routed(dispatcher, model, inputs, version, routing_key, priority, timeout_us,
                                         cancellable)

    def core_router(self):
        """The core's ``_core.Router`` that routed requests go through, for native code that submits
        to it directly (the native gRPC frontend). Unavailable once the engine is closed; a holder
        must drop it before ``close`` (which waits for the router's requests when it is dropped)."""
        return self._core_router()

    def _core_router(self):
        r = self._router
        if r is None:
            with self._lock:
                if self._closed:
                    raise Unavailable("the engine is closed")
                if self._router is None:
                    self._router = _core.Router(self._core)
                r = self._router
        return r

    def _call_router(self, method: str, *args):
        try:
            return getattr(self._core_router(), method)(*args)
        except _core.CoreError as e:
            raise from_core_error(e) from None

    def _submit_routed(self, dispatcher, model, inputs, version, routing_key, priority, timeout_us,
                       cancellable=False):
        if type(inputs) is not dict:
            inputs = self.model(model, version)._as_dict(inputs)
        timeout = 0 if timeout_us is None else min(max(int(timeout_us), 1), _MAX_TIMEOUT_US)
        try:
            return dispatcher.submit_routed(self._core_router(), model, _version(version), routing_key, inputs,
                                            self._output_names, priority, timeout, cancellable)
        except _core.CoreError as e:
            raise from_core_error(e) from None

    def _output_names(self, model: str, version: int) -> tuple:
        """The output names of a version that answered (cached: its answers may arrive after close)."""
        names = self._names.get((model, version))
        if names is None:
            names = self._names[(model, version)] = self._core_model(model, version).host.output_names
        return names

    # ---- lifecycle ------------------------------------------------------------
    def close(self, *, drain: bool = True) -> None:
        """Answers every queued request (computed, or Cancelled when drain=False) and stops.
        Afterwards every call is refused with Unavailable. The router goes first: dropping it
        waits for the routed requests it accepted (computed even when drain=False), while the
        engine still serves their fallbacks."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            router, self._router = self._router, None
        del router  # ~Router (GIL released) waits for its accepted requests
        for name, version in self._core.list():  # routed answers may resolve after shutdown
            self._names.setdefault((name, version), self._core.get(name, version).host.output_names)
        self._core.shutdown(drain)
        if self._thread is not None:
            self._thread.close()
        for d in list(self._loops.values()):
            d.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _prepare(self, config: Any, backend: Any) -> tuple:
        """(config placed where the backend runs, the native backend, its CUDA device or None).
        A factory with a ``gpu_device`` (backends/gpu.py) places the model on that device: the
        core config gets "gpu" and an unset ``instances`` becomes 2."""
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(config)
        factory = as_backend(backend)
        device = gpu_device(factory)
        config = config.placed(device)
        return config, factory.create(config), device

    def _gpu_bytes(self, core_model, name: str, version: int) -> int:
        """What a version takes on its GPU: its measured charge, else the core's own buffers; 0 on the CPU."""
        charged = self.gpu_memory.charged(name, version)
        if charged is not None:
            return charged
        info = getattr(core_model, "gpu_memory", None)
        return int(info()["device_bytes"]) if info is not None else 0

    def _core_model(self, name: str, version: Optional[int]):
        try:
            return self._core.get(name, _version(version))
        except _core.CoreError as e:
            raise from_core_error(e) from None

    def _thread_dispatcher(self) -> ThreadDispatcher:
        d = self._thread
        if d is None:
            with self._lock:
                if self._thread is None:
                    self._thread = ThreadDispatcher()
                    self._sinks_alive.append(self._thread)
                d = self._thread
        return d

    def _loop_dispatcher(self, loop) -> LoopDispatcher:
        d = self._loops.get(loop)
        if d is None:
            d = LoopDispatcher(loop)
            self._loops[loop] = d
            self._sinks_alive.append(d)
        return d


def _version(version: Optional[int]) -> int:
    """The core's version number: 0 (Engine::kLatest) for None."""
    return 0 if version is None else int(version)
