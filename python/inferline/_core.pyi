"""Type stubs for ``inferline._core``, the native binding (csrc/bindings/module.cpp).

Kept in step with the binding by tests/python/test_core_stubs.py. The binding
raises only ``CoreError``; ``inferline.errors.from_core_error`` maps it to the
``inferline.errors`` classes.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

STATUS_NAMES: Dict[int, str]
"""gRPC status number -> name ("INVALID_ARGUMENT")."""

class CoreError(Exception):
    """A non-OK core status; str() is the message."""

    code: int
    """The gRPC status number."""
    message: str
    """Names the model, version and field at fault."""

class Backend:
    """What runs a batch; made by the functions below or a backend factory."""

def echo_backend(outputs: List[str]) -> Backend:
    """Native backend copying input i to output i (measures the engine's own overhead)."""

NATIVE_ORT: str
""""" where this build has the native ONNX Runtime backend (OrtBackend), else why not."""

ORT_API_VERSION: int
"""The ONNX Runtime C API version OrtBackend calls (0 without it); older libraries are refused."""

class OrtBackend(Backend):
    """ONNX Runtime through its C API on the executor threads (csrc/ort/, inferline/ort_backend.h)."""

    inputs: List[Tuple[str, str, Optional[List[Union[int, str, None]]]]]
    """The graph's inputs: (name, "tensor(float)", dims: ints, symbolic names or None; None when unknown)."""
    outputs: List[Tuple[str, str, Optional[List[Union[int, str, None]]]]]
    """The graph's outputs, as inputs."""
    library_version: str
    """The loaded library's version ("1.32.0")."""

def ort_backend(library: str, model_path: str, *, intra_op_threads: int, inter_op_threads: int = 0,
                parallel: bool = False, graph_optimization: int = 99,
                config_entries: List[Tuple[str, str]] = [], output_names: List[str]) -> OrtBackend:
    """Opens model_path on ONNX Runtime's CPU provider from the library at `library` (dlopen'd once).
    graph_optimization: 0 disable, 1 basic, 2 extended, 99 all. CoreError FAILED_PRECONDITION: the
    library cannot be loaded or is too old; INVALID_ARGUMENT: the model or an option is refused."""

def python_backend(fn: Callable[[Dict[str, np.ndarray]], Any], outputs: List[str]) -> Backend:
    """Backend calling fn({input: array}) once per batch; returns {output: array} or arrays in order."""

class DeviceArray:
    """A buffer in CUDA device memory handed to a device backend (valid for that call; its address
    stays the same for the model's lifetime). ``torch.as_tensor(a, device=f"cuda:{a.device}")``
    views it without a copy through ``__cuda_array_interface__`` (version 3, no stream key)."""

    @property
    def ptr(self) -> int: ...
    @property
    def shape(self) -> Tuple[int, ...]: ...
    @property
    def dtype(self) -> str:
        """NumPy dtype name, e.g. "float32"."""
    @property
    def device(self) -> int: ...
    @property
    def capacity_rows(self) -> int:
        """Rows that fit from ptr to the end of the buffer (>= shape[0])."""
    @property
    def __cuda_array_interface__(self) -> Dict[str, Any]: ...
    def with_rows(self, rows: int) -> "DeviceArray":
        """The same buffer seen with ``rows`` rows (ValueError past capacity_rows)."""

def device_backend(fn: Callable[[List[DeviceArray], List[DeviceArray], int], None], output_names: List[str],
                   device: int) -> Backend:
    """Backend for a model placed on CUDA device ``device`` (config key "gpu"): fn(inputs, outputs,
    stream) per batch enqueues, on the cudaStream_t ``stream``, the work writing every output row."""

def cuda_status() -> Dict[str, Any]:
    """{"built": compiled with CUDA, "devices": visible CUDA devices, "reason": what is missing ("" if none)}."""

def cuda_mem_info(device: int) -> Tuple[int, int]:
    """(free bytes, total bytes) of CUDA device ``device``; CoreError (FAILED_PRECONDITION) without it."""

# (tag, status code, message or None, outputs in declared order, queue_us, compute_us,
#  answered_model, answered_version, fallback_reason: "none" when the primary (or a plain engine
#  request's model) answered, else "error", "deadline", "overload", "breaker_open", "unavailable",
#  primary_version: the version a routed request was routed to, 0 for plain engine requests)
Answer = Tuple[int, int, Optional[str], Tuple[np.ndarray, ...], int, int, str, int, str, int]

class Sink:
    """Where answers queue; its eventfd is readable when some are waiting (once per batch)."""

    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    def drain(self) -> List[Answer]: ...
    def wait(self, timeout_ms: int) -> bool:
        """Blocks (GIL released) until answers wait or timeout_ms passes; True if readable."""

class Model:
    """One loaded version, as ``Engine.get`` finds it."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def host(self) -> Any:
        """The object passed as ``host`` when the version was loaded (None if none)."""
    def now_us(self) -> int: ...
    def stats(self) -> Dict[str, Any]: ...
    def reset_stats(self) -> None: ...
    def gpu_memory(self) -> Dict[str, int]:
        """The core's own buffers of a version placed on a GPU: {"device", "device_bytes", "pinned_bytes"}
        (device -1 and zeros on the host)."""

class Engine:
    """The loaded versions by (name, version); version 0 means the latest loaded."""

    def __init__(self) -> None: ...
    def load(self, config: Mapping[str, Any], backend: Backend, host: Any = None) -> None:
        """CoreError ALREADY_EXISTS if the version is loaded."""
    def replace(self, config: Mapping[str, Any], backend: Backend, host: Any = None, drain: bool = True) -> None:
        """Publishes the new model in place of the loaded version, then drains (or cancels) the old one."""
    def unload(self, name: str, version: int = 0, drain: bool = True) -> None: ...
    def get(self, name: str, version: int = 0) -> Model:
        """CoreError NOT_FOUND naming what is loaded."""
    def list(self) -> List[Tuple[str, int]]: ...
    def submit(self, name: str, version: int, inputs: Mapping[str, Any], tag: int, sink: Sink, priority: int,
               timeout_us: int, keep: List[Any]) -> None:
        """inputs: {input name: array-like}; timeout_us relative (0 = none). Appends the arrays the core
        reads (copies where an input was not a C-contiguous array) to `keep`, which must outlive the answer."""
    def shutdown(self, drain: bool = True) -> None: ...
    def now_us(self) -> int: ...

class Router:
    """Routes requests by a published per-model policy, with fallback (the core's Router).

    Keeps its Engine alive. Dropping it waits (GIL released) for every request it accepted to be
    answered, so drop it before ``engine.shutdown()``; never from a backend."""

    def __init__(self, engine: Engine) -> None: ...
    def publish(self, model: str, policy: Mapping[str, Any]) -> None:
        """policy: routing.policy.ModelPolicy.to_core()'s dict ("name", "live", "served", "versions":
        [{"version", "chain": [{"model", "version"}], "breaker": {...} | None, "cache_bytes",
        "cache_last_resort"}]) plus optional "epoch", "arms" [{"version", "lo", "hi"}] (default: every
        bucket to "live") and "fallback" [{"model", "version"}]. CoreError INVALID_ARGUMENT names the
        field (unknown keys too); FAILED_PRECONDITION for an epoch older than the published one."""
    def remove(self, model: str) -> None:
        """CoreError NOT_FOUND if no policy is published for the model."""
    def stats(self, model: str) -> Dict[str, Any]:
        """CoreError NOT_FOUND if no policy is published for the model."""
    def default_version(self, model: str) -> int:
        """The version owning bucket 0 of the model's arms; 0 without a policy."""
    def submit(self, model: str, version: int, routing_key: Optional[Union[bytes, str]],
               inputs: Mapping[str, Any], tag: int, sink: Sink, priority: int, timeout_us: int,
               keep: List[Any], cancel: Optional["CancelFlag"] = None) -> None:
        """As Engine.submit; version 0 = by the policy's arms (routing_key, else the inputs, picks the
        arm). Inputs are converted for the explicit version, else the policy's default version (else
        the latest loaded); the core refuses a primary and skips a fallback with other inputs.
        `cancel`: setting it before the request's batch runs answers it CANCELLED, never computed."""

class StageHistogram:
    """Latency of a stage timed in Python, on the core's bucket bounds (lock-free, relaxed)."""

    def __init__(self) -> None: ...
    def observe_ns(self, ns: int) -> None:
        """Counts one duration in nanoseconds (recorded in whole microseconds, truncated)."""
    def snapshot(self) -> Dict[str, Any]:
        """{"count", "mean", "max", "p50", ..., "sum", "buckets"} in microseconds, as ``Model.stats()``'s histograms."""

class CancelFlag:
    """Withdraws a submitted request whose caller went away (model.h InferRequest::cancelled)."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...

NATIVE_FRONTEND: str
""""" when this build has the native gRPC frontend (``NativeFrontend``, ``ControlReply``); else why not
(those two classes are then absent)."""

class ControlReply:
    """Finishes one control call of a ``NativeFrontend`` (the ``reply`` argument of ``control``)."""

    def __call__(self, code: int, message: str = "", response: bytes = b"",
                 trailers: Sequence[Tuple[str, Union[str, bytes]]] = ...) -> None:
        """Answers the call: ``code`` a gRPC status number (0..16, else ValueError), ``message`` its
        message when non-OK, ``response`` the serialized response message when OK, ``trailers`` the
        trailing metadata. Callable from any thread (releases the GIL while finishing the call); only
        the first call counts, later ones are ignored, as is a reply after the call was cancelled or
        the frontend shut down. A reply object dropped without being called answers INTERNAL."""

# (model as requested, request id, inputs {name: array} in the config order of the version converted
#  for, outputs {name: array} of the answering version or None when the request failed, status code,
#  message ("" when OK), answered_model, answered_version, fallback_reason ("none", "error", ...),
#  primary_version, latency_us from admission to answer, requested_version: the version the request
#  named, 0 when the policy routed it). Arrays are copies owning their memory.
TapRecord = Tuple[str, str, Dict[str, np.ndarray], Optional[Dict[str, np.ndarray]], int, str, str, int, str, int, int,
                  int, int]
"""(model, request_id, inputs, outputs or None, code, message, answered_model, answered_version,
fallback_reason, primary_version, latency_us, requested_version, reasons: TAP_SAMPLED | TAP_COPY |
TAP_LABEL bits)."""
TAP_SAMPLED: int
TAP_COPY: int
TAP_LABEL: int
ArmCounts = Tuple[str, int, int, int, int, List[int]]
"""(model, version, requests, errors, fallbacks, latency histogram counts)."""

class NativeFrontend:
    """The native KServe v2 gRPC frontend (csrc/frontend/include/inferline/grpc_frontend.h): ModelInfer
    and ModelStreamInfer answered in C++ through ``router``; every other RPC handed to ``control``.

    Only where ``NATIVE_FRONTEND == ""``. Keeps ``router`` alive. ``shutdown`` (and dropping the object,
    which shuts down with grace 0) waits for every call to end, and a control call may need the event
    loop to answer: call them off the event loop thread (e.g. in an executor), never from ``control``,
    and keep a reference while serving (the last reference must not go inside ``control``)."""

    def __init__(self, router: Router, options: Mapping[str, Any],
                 control: Optional[Callable[[str, bytes, List[Tuple[str, Union[str, bytes]]], Optional[float],
                                             ControlReply], None]] = None,
                 tap: bool = False) -> None:
        """Binds and starts serving (GIL released). ``options`` (all optional; None = the default):
        "address" ("127.0.0.1:8001"; port 0 = a free one), "threads", "max_message_bytes",
        "max_concurrent_streams", "reuse_port", "tls_cert_pem", "tls_key_pem", "max_streams",
        "stream_idle_timeout_s", "admission_limit" (> 0: static; 0: adaptive), "admission_initial",
        "admission_min", "admission_max", "admission_target_ms"; an unknown key raises ValueError
        naming it. CoreError when the frontend cannot start (UNAVAILABLE naming the address it cannot
        bind; INVALID_ARGUMENT for bad options).

        ``control(method, request, metadata, deadline_left_s, reply)``: called on a gRPC thread with
        the GIL for every RPC not answered natively (method the full path, e.g.
        "/inference.GRPCInferenceService/ModelMetadata"; request the serialized message; metadata the
        client's (key, value) pairs, values of "-bin" keys as bytes; deadline_left_s None without a
        deadline). It must return quickly and answer through ``reply`` later, from any thread. An
        exception it raises answers INTERNAL ("internal error (TypeName); see the server log") and is
        logged on logger "inferline.server.native". None: those RPCs answer UNIMPLEMENTED.

        ``tap``: copies of answered inference requests (a share per model, ``set_tap_share``) queue
        for ``drain_tap`` (at most 4096; more are dropped and counted in ``tap_dropped``)."""
    @property
    def port(self) -> int:
        """The bound port."""
    def set_serving(self, serving: bool) -> None:
        """ServerReady and health (Check/Watch of "" and the inference service) follow this."""
    def set_tap_share(self, model: str, share: float) -> None:
        """The share (0..1, else ValueError) of ``model``'s answered requests copied to the tap; 0 removes it."""
    def set_arm_watch(self, model: str, arms: Optional[Dict[int, float]], latency_bounds_ms: List[float] = ...,
                      max_copies_per_s: float = 0.0, tap_with_id: bool = False) -> None:
        """Counts ``model``'s routed requests per arm (version: share of its OK answers copied to
        the tap, TAP_COPY, at most ``max_copies_per_s`` per arm, 0: no cap); ``tap_with_id`` also
        copies OK answers with a request id (TAP_LABEL); ``arms`` None ends the watch. CoreError
        (INVALID_ARGUMENT) for unsorted bounds or a share outside [0, 1] (grpc_frontend.h ArmWatch)."""
    def take_arm_counts(self) -> List[ArmCounts]:
        """Every arm's counts since the last call (arms without requests left out)."""
    def stats(self) -> Dict[str, Any]:
        """{"admission": {"limit", "adaptive", "in_flight", "latency_ms", "admitted", "refused":
        {"overload", "deadline"}}, "errors": {(protocol "grpc" | "grpc_stream", code name, model
        label): count}, "stages": {(model, version as str): (decode, encode)} with histograms shaped
        as ``StageHistogram.snapshot()``, "open_streams": int}."""
    def shutdown(self, grace_s: float) -> None:
        """Health NOT_SERVING, new calls refused, calls in flight get ``grace_s`` then are cancelled;
        returns when every call has ended (GIL released). Idempotent. Not on the event loop thread."""
    def tap_fd(self) -> int:
        """An eventfd readable while tap records wait (-1 without ``tap``); read it with ``drain_tap``."""
    def drain_tap(self) -> List[TapRecord]:
        """The tap records waiting, oldest first ([] without ``tap``); clears the fd."""
    @property
    def tap_dropped(self) -> int:
        """Tap records dropped because 4096 were waiting."""

NATIVE_LOADGEN: str
""""" when this build has the native gRPC load generator (``GrpcLoad``); else why not (``GrpcLoad`` is then
absent)."""

class GrpcLoad:
    """The native gRPC load generator (csrc/loadgen/include/inferline/grpc_load.h), the ``native`` transport of
    ``inferline bench``: pre-encoded requests sent round-robin to ``method`` over ``channels`` connections,
    unary or (``stream``) over bidi streams, closed loop (``concurrency``) or open loop (``rate`` > 0).
    Only where ``NATIVE_LOADGEN == ""``."""

    def __init__(self, target: str, method: str, payloads: List[bytes], *, stream: bool = False,
                 channels: int = 1, streams: int = 0, concurrency: int = 1, rate: float = 0.0,
                 poisson: bool = False, phase_s: float = 0.0, warmup_s: float = 1.0, duration_s: float = 10.0,
                 timeout_s: float = 30.0, max_outstanding: int = 10000, interval_s: float = 1.0,
                 precision: float = 0.01, seed: int = 0) -> None:
        """Checks the options (CoreError INVALID_ARGUMENT) and makes the channels (not yet connected)."""
    def wait_ready(self, timeout_s: float) -> None:
        """Connects every channel (GIL released); CoreError UNAVAILABLE when one does not within timeout_s."""
    def run(self, start_at: float, precision: float = 0.01) -> Dict[str, Any]:
        """Runs the load from ``start_at`` (time.monotonic seconds) to the end of its answers, GIL released;
        once per object. The result has inferline.loadgen.worker.Recorder.result()'s keys ("latency", "lag",
        "series" as Histogram.to_dict of ``precision``; "errors", "ok", "fallback", "sent_total",
        "answered_total") plus "cpu_s" (the process's CPU from the window's start) and "achieved_rps"."""
    def progress(self) -> Tuple[int, int]:
        """(answers so far, warm-up included; errors in the measured window so far); any thread."""
