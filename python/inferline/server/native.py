"""The native gRPC frontend in `inferline serve`: C++ serves inference, Python stays the control plane.

    frontend = await start_native_grpc(dataplane, settings)   # as grpc_frontend.start_grpc
    frontend.port
    await frontend.stop(grace_s)                              # blocks a pool thread, not the loop

``_core.NativeFrontend`` (csrc/frontend/include/inferline/grpc_frontend.h) answers ModelInfer,
ModelStreamInfer, ServerLive, ServerReady and the server's own health from C++, straight into the
core's router (the one inside the worker's ``Engine``), with its own admission control. Python
keeps what the Python frontend did around those requests, without touching each one:

- Control calls (metadata, config, statistics, repository, model health, the UNIMPLEMENTED RPCs)
  arrive on a gRPC thread as bytes; ``ControlBridge`` schedules their answer on the worker's event
  loop and answers them with the Python frontend's own handlers (grpc_frontend.answer_unary over
  InferenceService and health_check), through ``ControlContext``, a stand-in for grpc.aio's
  servicer context.
- Readiness follows ``DataPlane.accepting`` (``set_serving``).
- Rollouts and the request tap (``TapConsumer``): while a model has a canary or shadow, the
  frontend counts its requests per arm in C++ (requests, errors, fallbacks, latency histogram;
  ``set_arm_watch``), and the recorder collects those counts at each publish and flush
  (``Recorder.count_sources``). Only the answers the recorder compares are copied to a queue the
  loop drains when its eventfd is readable: a canary answer drawn for its mirror, a stable answer
  drawn for the shadow (both at most ``CanaryConfig.max_copies_per_s``), an answer with a request
  id (label feedback); plus, while the inference log is on, each model's sampled share. Set at
  start and after every model-manager sync.
- Metrics: the frontend's errors, decode/encode histograms and admission refusals are a source of
  the data plane's ``FrontendStats`` (``NativeStats``), so /metrics has the same series whichever
  frontend answers; records the tap had to drop are counted (``tap_dropped``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

import grpc
from grpc_health.v1 import health_pb2

from .. import _core
from ..engine import RoutedResult
from ..errors import FailedPrecondition, Unavailable, from_core_error
from ..rollout.recorder import LATENCY_BOUNDS_MS
from ..service import Answer
from .dataplane import DataPlane
from .grpc_frontend import SERVICE, InferenceService, answer_unary, health_check
from .settings import ServerSettings

log = logging.getLogger("inferline.server.native")

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_NO_REASON = (None, "", "none")


class NativeUnavailable(FailedPrecondition):
    """--frontend native where this build of inferline has no native gRPC frontend."""


def unavailable_reason() -> str:
    """"" where the native frontend is built, else why not (and what to install)."""
    return getattr(_core, "NATIVE_FRONTEND", "this build of inferline has no native gRPC frontend")


def choose_frontend(requested: Optional[str]) -> tuple:
    """(frontend, why not native): `requested` ("native", "python" or None: native where built).
    NativeUnavailable when native is asked for and missing."""
    reason = unavailable_reason()
    if requested == "python":
        return "python", ""
    if requested == "native" and reason:
        raise NativeUnavailable(f"--frontend native: {reason}")
    return ("python", reason) if reason else ("native", "")


# ---- control calls ------------------------------------------------------------------------

class ControlAbort(grpc.aio.AbortError):
    """ControlContext.abort: ends a control call with a status (as grpc.aio's abort does)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class ControlContext:
    """What the handlers ask of grpc.aio's ServicerContext, for a call the native frontend handed over."""

    def __init__(self, metadata, deadline_left_s: Optional[float]):
        self._metadata = tuple(metadata)
        self._deadline = None if deadline_left_s is None else time.monotonic() + deadline_left_s
        self.trailers: list = []

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self) -> Optional[float]:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_trailing_metadata(self, metadata) -> None:
        self.trailers = list(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        if trailing_metadata:
            self.trailers = list(trailing_metadata)
        raise ControlAbort(code, details)


class ControlBridge:
    """The native frontend's control handler: each call answered on the worker's event loop by the
    Python frontend's own handlers."""

    def __init__(self, dataplane: DataPlane, settings: ServerSettings, loop: asyncio.AbstractEventLoop):
        self._dp = dataplane
        self._loop = loop
        rpcs = InferenceService(dataplane, settings).unary_rpcs()
        self._rpcs = {f"/{SERVICE}/{name}": handler for name, handler in rpcs.items()}
        self._rpcs[HEALTH_CHECK] = (self._health, health_pb2.HealthCheckRequest)
        self._tasks: set = set()

    def __call__(self, method: str, request: bytes, metadata, deadline_left_s, reply) -> None:
        """A gRPC thread (GIL held): hands the call to the loop and returns at once."""
        try:
            self._loop.call_soon_threadsafe(self._start, method, request, metadata, deadline_left_s, reply)
        except RuntimeError:  # the loop is closed: the worker is going away
            reply(grpc.StatusCode.UNAVAILABLE.value[0], "the server is shutting down")

    def _start(self, method, request, metadata, deadline_left_s, reply) -> None:
        task = self._loop.create_task(self._answer(method, request, metadata, deadline_left_s, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, method, request, metadata, deadline_left_s, reply) -> None:
        context = ControlContext(metadata, deadline_left_s)
        try:
            handler = self._rpcs.get(method)
            if handler is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")
            response = await answer_unary(*handler, request, context)
        except ControlAbort as e:
            reply(e.code.value[0], e.details, b"", context.trailers)
        except asyncio.CancelledError:
            reply(grpc.StatusCode.CANCELLED.value[0], "the server is shutting down")
            raise
        else:
            reply(0, "", response, context.trailers)

    async def _health(self, request, context):
        return await health_check(self._dp, request, context)


# ---- the request tap --------------------------------------------------------------------

class TapConsumer:
    """Sets what each served model's answers the frontend copies to the tap, hands the copies to the
    rollout recorder and the inference log (module docstring), and is the recorder's count source
    for the arms the frontend counts. Runs on the worker's event loop."""

    def __init__(self, frontend, dataplane: DataPlane, loop: asyncio.AbstractEventLoop):
        self._fe = frontend
        self._dp = dataplane
        self._loop = loop
        self._fd = frontend.tap_fd()
        self._shares: dict = {}   # model -> the inference log's sample rate
        self._watches: dict = {}  # model -> the arm watch set (arms, cap, tap_with_id)

    def start(self) -> None:
        self._dp.models.recorder.count_sources.append(self.take_counts)
        self.update_shares()
        self._loop.add_reader(self._fd, self.drain)

    def stop(self) -> None:
        """After the frontend's shutdown: the last records and counts, then no more reading."""
        self._loop.remove_reader(self._fd)
        self.drain()
        recorder = self._dp.models.recorder
        if self.take_counts in recorder.count_sources:
            recorder.count_sources.remove(self.take_counts)
        recorder.add_counts(self.take_counts())
        self._fe = None

    def take_counts(self) -> list:
        """The frontend's per-arm counts since the last call (the recorder's count source)."""
        fe = self._fe
        return [] if fe is None else fe.take_arm_counts()

    def update_shares(self) -> None:
        """Each served model's log share (its sample rate while the log is on) and, while a
        rollout or shadow watches it, its arm watch: every arm counted, the arms whose answers are
        copied (canary -> stable mirror, stable -> shadow) with their shares and cap."""
        if self._fe is None:
            return
        shares, watches = {}, {}
        logging_on = self._dp.inference_log is not None
        for name in sorted({n for n, _v, _routed in self._dp.router.served()}):
            rate = self._sample_rate(name) if logging_on else 0.0
            if rate > 0:
                shares[name] = rate
            w = self._dp.models.recorder.watch(name)
            if w is not None:
                arms = {int(v): 0.0 for v in w.arms}
                caps = [0.0]
                for version, (share, _target, _counts, _arm, cap) in w.copies.items():
                    arms[int(version)] = min(1.0, max(0.0, share / 100.0))
                    caps.append(cap)
                # one cap for the watch: the copies' arms differ (canary vs stable), so the larger
                # of the two is each arm's bound here (the recorder's in-flight bound still holds)
                watches[name] = (arms, max(caps), bool(w.watch.record_predictions))
        fe = self._fe
        for name in self._shares.keys() - shares.keys():
            fe.set_tap_share(name, 0.0)
        for name, rate in shares.items():
            if self._shares.get(name) != rate:
                fe.set_tap_share(name, rate)
        for name in self._watches.keys() - watches.keys():
            fe.set_arm_watch(name, None)
        for name, (arms, cap, with_id) in watches.items():
            if self._watches.get(name) != (arms, cap, with_id):
                fe.set_arm_watch(name, arms, LATENCY_BOUNDS_MS, cap, with_id)
        self._shares, self._watches = shares, watches

    def _sample_rate(self, name: str) -> float:
        try:
            return min(1.0, max(0.0, float(self._dp.service.config(name).logging.sample_rate)))
        except Exception:  # unloaded meanwhile
            return 0.0

    def drain(self) -> None:
        if self._fe is None:
            return
        for record in self._fe.drain_tap():
            try:
                self._observe(*record)
            except Exception:  # a bad record must not stop the others
                log.exception("a tapped request could not be recorded")

    def _observe(self, model, request_id, inputs, outputs, code, message, answered_model, answered_version,
                 fallback_reason, primary_version, latency_us, requested_version, reasons) -> None:
        if code != 0:  # the frontend counted it on its arm; the log samples answers only
            return
        t0 = time.perf_counter() - latency_us / 1e6  # as if timed from admission, like the Python path
        reason = None if fallback_reason in _NO_REASON else fallback_reason
        if reasons & (_core.TAP_COPY | _core.TAP_LABEL):
            recorder = self._dp.models.recorder
            watch = recorder.watch(model) if requested_version == 0 else None
            if watch is not None:
                result = RoutedResult(outputs, answered_model, answered_version, reason, primary_version)
                recorder.answered(watch, inputs, result, t0, request_id or None, on_loop=True, counted=True,
                                  copy=bool(reasons & _core.TAP_COPY))
        ilog = self._dp.inference_log
        if ilog is not None and reasons & _core.TAP_SAMPLED:
            ilog.sample(model, request_id, inputs, Answer(outputs, answered_model, answered_version, reason), t0)


# ---- metrics --------------------------------------------------------------------------

class NativeStats:
    """A FrontendStats source over the native frontend's Stats(); keeps the last reading after stop."""

    def __init__(self, frontend):
        self._fe = frontend
        self._last = {"admission": {"refused": {}}, "errors": {}, "stages": {}, "open_streams": 0}
        self._dropped = 0

    def _read(self) -> dict:
        fe = self._fe
        return self._last if fe is None else fe.stats()

    def errors(self) -> dict:
        return dict(self._read()["errors"])

    def stage_snapshots(self) -> dict:
        return dict(self._read()["stages"])

    def admission(self) -> dict:
        return self._read()["admission"]

    def tap_dropped(self) -> int:
        fe = self._fe
        return self._dropped if fe is None else fe.tap_dropped

    def freeze(self) -> None:
        """The frontend is going: its last counts stay readable."""
        fe, self._fe = self._fe, None
        if fe is not None:
            self._last, self._dropped = fe.stats(), fe.tap_dropped


# ---- start and stop -------------------------------------------------------------------

class NativeGrpcFrontend:
    """A started native frontend and what serves it from Python (see the module docstring)."""

    def __init__(self, fe, tap: TapConsumer, stats: NativeStats):
        self._fe, self._tap, self.stats = fe, tap, stats
        self.port = fe.port
        self.native = fe
        """The ``_core.NativeFrontend`` (None once stopped)."""

    def set_serving(self, serving: bool) -> None:
        fe = self._fe
        if fe is not None:
            fe.set_serving(serving)

    def admission(self) -> dict:
        """The native admission's state (as ``Admission.stats()``)."""
        return self.stats.admission()

    async def stop(self, grace_s: Optional[float] = None) -> None:
        """Health turns NOT_SERVING, new calls are refused, in-flight calls get `grace_s` to finish.
        The frontend is then released (it holds the core's router, which the engine's close waits for)."""
        fe = self._fe
        if fe is None:
            return
        fe.set_serving(False)
        await asyncio.get_running_loop().run_in_executor(None, fe.shutdown, float(grace_s or 0.0))
        self._tap.stop()
        self.stats.freeze()
        self._fe = self.native = None


NATIVE_MAX_CONCURRENT_STREAMS = 1024
"""--max-concurrent-streams 0 on the native frontend. Its lobby admits the newest call that can
still meet its deadline; calls held back by the transport wait in the client oldest first and
arrive stale. Measured (bench/README.md, issue 13): 10x open loop on digits-heavy, 128 per
connection 0.40-0.46 of capacity answered in time, 512-4096 0.65-0.70."""


def native_options(settings: ServerSettings) -> dict:
    """The NativeFrontend options of a server with `settings`."""
    options = {
        "address": grpc_address(settings.host, settings.grpc_port),
        "max_message_bytes": int(settings.max_message_bytes),
        "max_concurrent_streams": int(settings.max_concurrent_streams or NATIVE_MAX_CONCURRENT_STREAMS),
        "reuse_port": settings.workers > 1,  # only a server's own workers share its port
        "max_streams": int(settings.max_streams),
        "stream_idle_timeout_s": float(settings.stream_idle_timeout_s),
        "admission_limit": int(settings.admission_limit),
        "admission_target_ms": float(settings.admission_target_ms),
        "admission_lobby": int(settings.admission_lobby),
        "overload_batch_sched": settings.overload_sched == "batch",
        "overload_coalesce": settings.overload_coalesce == "on",
    }
    if settings.tls:
        with open(settings.tls_cert, encoding="utf-8") as f:
            options["tls_cert_pem"] = f.read()
        with open(settings.tls_key, encoding="utf-8") as f:
            options["tls_key_pem"] = f.read()
    return options


def grpc_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


async def start_native_grpc(dataplane: DataPlane, settings: ServerSettings) -> NativeGrpcFrontend:
    """Starts the native frontend on settings.host:settings.grpc_port (as grpc_frontend.start_grpc)."""
    reason = unavailable_reason()
    if reason:
        raise NativeUnavailable(reason)
    loop = asyncio.get_running_loop()
    options = native_options(settings)
    router = dataplane.models.engine.core_router()
    try:
        fe = _core.NativeFrontend(router, options, ControlBridge(dataplane, settings, loop), tap=True)
    except _core.CoreError as e:
        error = from_core_error(e)
        if isinstance(error, Unavailable):  # as the Python frontend reports a failed bind
            raise OSError(f"gRPC: cannot bind {options['address']}: {error.message}") from None
        raise error from None
    tap = TapConsumer(fe, dataplane, loop)
    stats = NativeStats(fe)
    frontend = NativeGrpcFrontend(fe, tap, stats)
    frontend.set_serving(dataplane.accepting)
    dataplane.on_accepting(frontend.set_serving)
    dataplane.on_sync(tap.update_shares)
    dataplane.frontend_stats.add_source(stats)
    tap.start()
    return frontend
