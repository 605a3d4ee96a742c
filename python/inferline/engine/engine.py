"""Engine: the in-process API, a thin facade over the native core's Engine.

    engine = Engine()
    model = engine.load(config, backend)         # one native scheduler per version
    y = engine.infer("digits", {"x": rows})      # blocking
    f = engine.submit("digits", {"x": rows})     # concurrent.futures.Future
    y = await engine.infer_async("digits", {"x": rows})
    engine.replace(config, new_backend)          # hot reload of a loaded version, no gap

What is loaded lives in the core (``_core.Engine``, the one (name, version) ->
model map); this module converts arguments and maps errors. Loading a version
that is loaded is refused (AlreadyExists); ``replace`` swaps it atomically. The
core checks inputs (dtypes, shapes, rows) before they reach the queue; errors
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

from .. import _core
from ..backends import as_backend
from ..config import ModelConfig
from ..errors import InvalidArgument, from_core_error
from .dispatch import LoopDispatcher, ThreadDispatcher


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

    def stats(self) -> dict:
        """The core's counters and histograms, plus ``last_inference_ms`` (Unix time in ms of the
        latest finished batch, 0 before the first)."""
        core = self._engine._core_model(self.name, self.version)
        s = core.stats()
        s["model"], s["version"] = self.name, self.version
        last = s["last_batch_end_us"]
        s["last_inference_ms"] = int(time.time() * 1000 - (core.now_us() - last) / 1000) if last else 0
        return s

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
    """Loads model versions and serves requests to them in-process."""

    def __init__(self):
        # Declared first so that models are shut down before the sinks they answer into.
        self._core = _core.Engine()
        self._lock = threading.Lock()  # guards the dispatchers and _closed
        self._thread: Optional[ThreadDispatcher] = None
        self._loops: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._sinks_alive: list = []  # every dispatcher ever made: its sink must outlive its requests
        self._closed = False

    # ---- model versions -------------------------------------------------------
    def load(self, config: Any, backend: Any) -> ModelHandle:
        """Starts serving one model version. `config` is a ModelConfig or a mapping.

        Raises AlreadyExists if that version is loaded: a hot reload is ``replace``.
        """
        config, native = self._prepare(config, backend)
        try:
            self._core.load(config.to_core(), native, config)
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
        config, native = self._prepare(config, backend)
        try:
            self._core.replace(config.to_core(), native, config, drain)
        except _core.CoreError as e:
            raise from_core_error(e) from None
        return ModelHandle(self, config)

    def unload(self, name: str, version: Optional[int] = None, *, drain: bool = True) -> None:
        """Stops a version (the latest when None) after answering its queued requests."""
        try:
            self._core.unload(name, _version(version), drain)
        except _core.CoreError as e:
            raise from_core_error(e) from None

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

    # ---- lifecycle ------------------------------------------------------------
    def close(self, *, drain: bool = True) -> None:
        """Answers every queued request (computed, or Cancelled when drain=False) and stops.
        Afterwards every call is refused with Unavailable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
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
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(config)
        return config, as_backend(backend).create(config)

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
