"""The service: what a server does, in-process — and what the server's frontends adapt.

    with inferline.Service() as svc:                        # the default repository, kept in sync
        answer = svc.infer("digits-mlp", {"pixels": x})     # routed like a network request
        answer["label"], answer.routed_to, answer.fallback_reason
        answer = await svc.infer_async("digits-mlp", {"pixels": x}, routing_key="user-7")

    svc = inferline.Service.from_model("model.onnx")        # one model file, no registry to manage

A ``Service`` owns an ``Engine``, the ``ModelManager`` that keeps the engine serving the
registry's live and canary versions, and the routing of each request to a version. The gRPC
and REST frontends (``inferline.server``) are thin adapters over one ``Service``: the same
request gets the same version, and the same answer, on every entry point.
"""

from __future__ import annotations

import os
import shutil
import time
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..engine import Engine
from ..errors import FailedPrecondition, InferlineError, InvalidArgument, ModelNotFound
from ..routing import Router
from .sync import ModelManager

__all__ = ["Answer", "ModelManager", "Service"]


@dataclass(frozen=True)
class Answer:
    """The outputs of one request and who produced them."""

    outputs: Mapping[str, Any]
    model: str
    version: int
    fallback_reason: Optional[str] = None
    """Why a fallback answered ("error", "deadline", "overload", "breaker_open", "unavailable");
    None when the routed version itself answered."""

    @property
    def routed_to(self) -> str:
        """NAME:VERSION of the version that produced the outputs."""
        return f"{self.model}:{self.version}"

    def __getitem__(self, output: str):
        return self.outputs[output]


class Service:
    """The registry's models served in-process: loaded, kept in sync, routed."""

    def __init__(self, repository: Optional[str] = None, *, poll_interval_s: float = 2.0,
                 engine: Optional[Engine] = None, manager: Optional[ModelManager] = None):
        """`repository`: as for ``inferline models`` (None: INFERLINE_REPOSITORY, else the default
        repository with the demo models). Polls it every `poll_interval_s` (0: load once, never
        poll). `engine`/`manager`: a server passes its own (it polls on its event loop)."""
        self._owns = manager is None
        self.engine = engine if engine is not None else (manager.engine if manager else Engine())
        self.models = manager if manager is not None else ModelManager(self.engine, repository, poll_interval_s)
        self.router: Router = self.models.router
        self._recorder = self.models.recorder
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None
        self._cleanup: Optional[str] = None
        if self._owns:
            self.models.sync_blocking()
            if poll_interval_s > 0:
                self._poller = threading.Thread(target=self._poll, args=(poll_interval_s,), daemon=True,
                                                name="inferline-service-poll")
                self._poller.start()

    @classmethod
    def from_model(cls, path: str, *, name: Optional[str] = None) -> "Service":
        """Serves one model package (directory) or bare .onnx file, without a registry to manage:
        it is validated, loaded, warmed and golden-checked as a push would, in a private
        repository removed at close."""
        from ..models.service import open_registry, push

        if not os.path.exists(path):
            raise InvalidArgument(f"{path}: no such model file or package directory")
        root = tempfile.mkdtemp(prefix="inferline-model-")
        try:
            registry = open_registry(root)
            try:
                push(registry, path, name=name, live=True)
            except ModelNotFound as e:
                if "fallback" not in str(e):
                    raise
                raise FailedPrecondition(f"{path}: the package declares a fallback model, which from_model cannot "
                                         f"serve alongside; push both with `inferline models push` and use "
                                         f"Service(repository) ({e})") from None
            finally:
                registry.close()
            svc = cls(root, poll_interval_s=0)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        svc._cleanup = root
        return svc

    # ---- inference ----------------------------------------------------------------
    def infer(self, model: str, inputs, *, version: Optional[int] = None, routing_key: Optional[str] = None,
              priority: int = 0, timeout_us: Optional[int] = None, request_id: Optional[str] = None) -> Answer:
        """Routes and runs one request (blocking). `priority`: the engine's level (higher first).
        `request_id`: names the request for label feedback (``feedback``) during a rollout."""
        watch = self._recorder.watch(model) if version is None else None
        if watch is None:
            result = self.engine.infer_routed(model, inputs, version=self._served(model, version),
                                              routing_key=routing_key, priority=priority, timeout_us=timeout_us)
            return Answer(result.outputs, result.model, result.version, result.fallback_reason)
        t0 = time.perf_counter()
        try:
            result = self.engine.infer_routed(model, inputs, routing_key=routing_key, priority=priority,
                                              timeout_us=timeout_us)
        except InferlineError as e:
            self._recorder.failed(watch, e, t0)
            raise
        self._recorder.answered(watch, inputs, result, t0, request_id)
        return Answer(result.outputs, result.model, result.version, result.fallback_reason)

    async def infer_async(self, model: str, inputs, *, version: Optional[int] = None,
                          routing_key: Optional[str] = None, priority: int = 0,
                          timeout_us: Optional[int] = None, request_id: Optional[str] = None,
                          cancellable: bool = False) -> Answer:
        """As ``infer``, awaiting the answer on the running event loop. ``cancellable``: when the
        awaiting task is cancelled (its client went away), the request leaves the core's queue
        and is never computed if its batch has not run (a server's frontends ask for this)."""
        watch = self._recorder.watch(model) if version is None else None
        if watch is None:
            result = await self.engine.infer_routed_async(model, inputs, version=self._served(model, version),
                                                          routing_key=routing_key, priority=priority,
                                                          timeout_us=timeout_us, cancellable=cancellable)
            return Answer(result.outputs, result.model, result.version, result.fallback_reason)
        t0 = time.perf_counter()
        try:
            result = await self.engine.infer_routed_async(model, inputs, routing_key=routing_key, priority=priority,
                                                          timeout_us=timeout_us, cancellable=cancellable)
        except InferlineError as e:
            self._recorder.failed(watch, e, t0)
            raise
        self._recorder.answered(watch, inputs, result, t0, request_id, on_loop=True)
        return Answer(result.outputs, result.model, result.version, result.fallback_reason)

    def feedback(self, model: str, labels) -> dict:
        """Ground-truth labels for earlier requests: ``labels`` is [(request_id, label)] (or
        {"id", "label"} mappings). Joined with the predictions recorded during a rollout or shadow
        to give each arm's accuracy. Returns {"accepted", "unknown", "unknown_ids" (the first 100)}:
        an id with no recorded prediction of this model is counted, never an error."""
        from ..registry import check_name

        check_name(model, "model")
        items = _labels(labels)

        def store(registry):
            self._recorder.flush(registry, self.models.worker_id)  # this process's newest predictions first
            return registry.rollouts.add_labels(model, items)

        accepted, unknown = self.models.run_on_registry(store)
        return {"accepted": accepted, "unknown": len(unknown), "unknown_ids": list(unknown[:100])}

    def _served(self, model: str, version: Optional[int]) -> Optional[int]:
        """`version` after checking that it is served (ModelNotFound naming what is); None stays
        None: the core routes it by the model's policy (a model without one goes to the engine's
        latest version, NOT_FOUND when it has none)."""
        if version is not None:
            self.router.route(model, str(version))  # raises ModelNotFound
        return version

    def config(self, model: str, version: Optional[int] = None):
        """The ModelConfig of the version a request for (`model`, `version`) reaches now (for a
        model with no serving version but a fallback: the fallback's)."""
        try:
            return self.router.route(model, "" if version is None else str(version)).config
        except ModelNotFound:
            fallback = self.models.fallback_config(model) if version is None else None
            if fallback is None:
                raise
            return fallback

    # ---- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        """Stops polling, answers every queued request, releases the engine (when owned)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        if self._owns:
            self.models.close()
            self.engine.close()
        if self._cleanup:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _poll(self, interval_s: float) -> None:
        import logging
        while not self._stop.wait(interval_s):
            try:
                self.models.sync_blocking()
            except Exception:  # a registry hiccup must not stop serving
                logging.getLogger("inferline.service").exception("registry poll failed")


MAX_LABELS = 10_000
"""Labels one feedback call may carry."""


def _labels(labels) -> list:
    """[(request_id, label text)] from [(id, label)] or [{"id", "label"}], checked."""
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise InvalidArgument("labels: expected a list of {'id': ..., 'label': ...}")
    out = []
    for i, item in enumerate(labels):
        if i >= MAX_LABELS:
            raise InvalidArgument(f"labels: at most {MAX_LABELS} per call")
        if isinstance(item, Mapping):
            rid, label = item.get("id"), item.get("label")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            rid, label = item
        else:
            raise InvalidArgument(f"labels[{i}]: expected {{'id': ..., 'label': ...}}, got {item!r:.80}")
        if not isinstance(rid, str) or not rid or len(rid) > 256:
            raise InvalidArgument(f"labels[{i}].id: expected a request id (1-256 characters), got {rid!r:.80}")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise InvalidArgument(f"labels[{i}].label: expected a class label (string or integer), got {label!r:.80}")
        out.append((rid, str(label)))
    return out
