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
