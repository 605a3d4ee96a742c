"""Engine: the in-process API over the native core.

    engine = Engine()
    model = engine.load(config, backend)         # one native scheduler per version
    y = engine.infer("digits", {"x": rows})      # blocking
    f = engine.submit("digits", {"x": rows})     # concurrent.futures.Future
    y = await engine.infer_async("digits", {"x": rows})

Inputs are checked (names, dtypes, shapes) before they reach the queue; errors
are ``inferline.errors`` classes whose message names the model, version and
input at fault. Each result is ``{output name: array}``; the arrays are views of
the batch output shared with the other requests of the batch (no copy).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any, Mapping, Optional

import numpy as np

from .. import _core
from ..backends import as_backend
from ..config import ModelConfig
from ..errors import InvalidArgument, ModelNotFound
from .dispatch import LoopDispatcher, ThreadDispatcher


_MAX_DEADLINE_US = 2**63 - 1  # deadlines are uint64 in the core; far enough = none in practice


class ModelHandle:
    """One loaded model version: infer/submit/infer_async without name lookups."""

    def __init__(self, engine: "Engine", config: ModelConfig, core_model):
        self.config = config
        self.name = config.name
        self.version = config.version
        self._engine = engine
        self._core = core_model
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

    def stats(self) -> dict:
        """The core's counters and histograms, plus ``last_inference_ms`` (Unix time in ms of the
        latest finished batch, 0 before the first)."""
        s = self._core.stats()
        s["model"], s["version"] = self.name, self.version
        last = s["last_batch_end_us"]
        s["last_inference_ms"] = int(time.time() * 1000 - (self._core.now_us() - last) / 1000) if last else 0
        return s

    def reset_stats(self) -> None:
        """Zeroes this version's statistics; exact while no request is in flight. The loader
        calls it after warm-up, so that served traffic alone is counted."""
        self._core.reset_stats()

    def _submit(self, dispatcher, inputs, priority, timeout_us):
        if type(inputs) is not dict:
            inputs = self._as_dict(inputs)
        deadline = 0 if timeout_us is None else min(self._core.now_us() + max(int(timeout_us), 1), _MAX_DEADLINE_US)
        try:
            return dispatcher.submit(self._core, inputs, self._names, priority, deadline)
        except InvalidArgument:
            fixed = _contiguous(inputs)
            if fixed is inputs:
                raise
            return dispatcher.submit(self._core, fixed, self._names, priority, deadline)

    def _as_dict(self, inputs) -> dict:
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if self._single_input is not None:
            return {self._single_input: inputs}
        raise InvalidArgument(f"{self.config.where}: inputs must be a mapping of input name to array "
                              f"(inputs: {', '.join(self.config.input_names)})")


def _contiguous(inputs: dict) -> dict:
    """The same inputs as C-contiguous ndarrays; `inputs` itself if they already are."""
    if all(isinstance(v, np.ndarray) and v.flags.c_contiguous for v in inputs.values()):
        return inputs
    return {k: np.ascontiguousarray(v) for k, v in inputs.items()}


class Engine:
    """Loads model versions and serves requests to them in-process."""

    def __init__(self):
        # Declared first so that models are shut down before the sinks they answer into.
        self._models: dict = {}  # name -> {version: ModelHandle}
        self._lock = threading.Lock()
        self._thread: Optional[ThreadDispatcher] = None
        self._loops: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._sinks_alive: list = []  # every dispatcher ever made: its sink must outlive its requests
        self._closed = False

    # ---- model versions -------------------------------------------------------
    def load(self, config: Any, backend: Any) -> ModelHandle:
        """Starts serving one model version. `config` is a ModelConfig or a mapping."""
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(config)
        factory = as_backend(backend)
        core_model = _core.Model(config.to_core(), factory.create(config))
        handle = ModelHandle(self, config, core_model)
        with self._lock:
            if self._closed:
                core_model.shutdown(True)
                raise InvalidArgument("engine is closed")
            old = self._models.setdefault(config.name, {}).get(config.version)
            self._models[config.name][config.version] = handle
        if old is not None:
            old._core.shutdown(True)
        return handle

    def unload(self, name: str, version: Optional[int] = None, *, drain: bool = True) -> None:
        """Stops a version (the latest when None) after answering its queued requests."""
        handle = self.model(name, version)
        with self._lock:
            versions = self._models[name]
            del versions[handle.version]
            if not versions:
                del self._models[name]
        handle._core.shutdown(drain)

    def model(self, name: str, version: Optional[int] = None) -> ModelHandle:
        versions = self._models.get(name)
        if not versions:
            loaded = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded (loaded: {loaded})")
        if version is None:
            return versions[max(versions)]
        handle = versions.get(int(version))
        if handle is None:
            raise ModelNotFound(f"model {name!r} version {version} is not loaded "
                                f"(versions: {', '.join(map(str, sorted(versions)))})")
        return handle

    def models(self) -> list:
        return [(n, v) for n in sorted(self._models) for v in sorted(self._models[n])]

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

    # ---- lifecycle ------------------------------------------------------------
    def close(self, *, drain: bool = True) -> None:
        """Answers every queued request (computed, or CANCELLED when drain=False) and stops."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handles = [h for versions in self._models.values() for h in versions.values()]
            self._models.clear()
        for h in handles:
            h._core.shutdown(drain)
        if self._thread is not None:
            self._thread.close()
        for d in list(self._loops.values()):
            d.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
