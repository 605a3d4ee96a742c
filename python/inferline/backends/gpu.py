"""What runtimes share to serve a model on a CUDA device: device names, the core's CUDA status,
device backends, the core's buffer sizes, and out-of-memory errors.

A runtime whose ``BackendSpec.device`` is "cuda" or "cuda:N" hands the engine a device backend,
``_core.device_backend(fn, output_names, N)``: the core gathers each batch into pinned host
memory, copies it to device N on the executor's own CUDA stream, runs the fused preprocessing
there, and calls (GIL held)

    fn(inputs: list[_core.DeviceArray], outputs: list[_core.DeviceArray], stream: int) -> None

with the backend-facing inputs and one allocated output per declared output (dim 0 = the
batch's rows, config order). ``fn`` enqueues on ``stream`` the work that writes those rows and
may return before it is done; the core copies the outputs back on the same stream. An
exception fails the batch's requests with INTERNAL. The buffers stay put for the model's
lifetime, one set per executor. The engine places such a model on the device (the core config's
``"gpu"`` key, ``ModelConfig.to_core(gpu_device=N)``) when its backend factory says so through a
``gpu_device`` attribute (``gpu_device(factory)``; None or absent: the host).

Every step checks first and says what is missing as an inferline error (a build without the
GPU path or without CUDA, no device, too few devices), never a crash in CUDA code.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .. import _core
from ..config import ModelConfig
from ..errors import FailedPrecondition, InvalidArgument, ResourceExhausted, from_core_error
from .signature import backend_inputs, describe


class GpuOutOfMemory(ResourceExhausted):
    """A CUDA device ran out of memory while a model loaded (or captured a CUDA graph)."""


def cuda_index(text: str, where: str) -> Optional[int]:
    """The CUDA device index of a ``backend.device`` text ("cuda" is device 0); None for "cpu"."""
    name, _, index = str(text).partition(":")
    if name == "cpu" and not index:
        return None
    if name != "cuda" or (index and not index.isdigit()):
        raise InvalidArgument(f"{where}: backend.device must be 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    return int(index) if index else 0


def gpu_device(factory: Any) -> Optional[int]:
    """The CUDA device a backend factory's models run on (its ``gpu_device``), None for the host."""
    device = getattr(factory, "gpu_device", None)
    return None if device is None else int(device)


def core_cuda_status() -> dict:
    """``_core.cuda_status()``: {"built", "devices", "reason"}; a build of the core that predates
    the GPU serving path reports itself as such."""
    status = getattr(_core, "cuda_status", None)
    if status is None:
        return {"built": False, "devices": 0,
                "reason": "this build of inferline._core has no GPU serving path (it lacks cuda_status and "
                          "device_backend): rebuild inferline from a source tree that has it"}
    return dict(status())


def require_core_device(index: int, where: str) -> None:
    """FailedPrecondition naming what is missing unless the core can serve on CUDA device `index`."""
    status = core_cuda_status()
    devices = int(status.get("devices", 0))
    if devices <= index:
        reason = status.get("reason") or f"inferline's core sees {devices} CUDA device(s)"
        raise FailedPrecondition(f"{where}: backend.device is 'cuda:{index}' but {reason}")
    if not hasattr(_core, "device_backend"):
        raise FailedPrecondition(f"{where}: backend.device is 'cuda:{index}' but this build of inferline._core "
                                 f"has no device_backend")


def device_backend(fn: Callable, output_names: Sequence[str], index: int) -> _core.Backend:
    """``_core.device_backend(fn, output_names, index)``, its errors as inferline errors."""
    make = getattr(_core, "device_backend", None)
    if make is None:
        raise FailedPrecondition("this build of inferline._core has no device_backend (no GPU serving path)")
    try:
        return make(fn, list(output_names), int(index))
    except _core.CoreError as e:
        raise from_core_error(e) from None


def stream_synchronizer(index: int) -> Optional[Callable[[int], None]]:
    """sync(stream): waits for a cudaStream_t (an int) of device `index`, for runtimes that run on
    streams of their own (ONNX Runtime): the core's ``cuda_stream_synchronize`` where it has one,
    else torch's; None without either."""
    sync = getattr(_core, "cuda_stream_synchronize", None)
    if sync is not None:
        return sync
    if importlib.util.find_spec("torch") is None:
        return None

    def torch_sync(stream: int) -> None:
        import torch
        torch.cuda.ExternalStream(int(stream), device=torch.device("cuda", index)).synchronize()

    return torch_sync


def check_fixed_dims(config: ModelConfig) -> None:
    """InvalidArgument unless every backend-facing input and every output has fixed dims past dim 0:
    the core sizes a GPU model's device buffers for max_batch_size rows when it loads."""
    free = [f"input {s.name!r} {describe(s.dtype, s.shape)}" for s in backend_inputs(config)
            if any(d < 0 for d in s.shape[1:])]
    free += [f"output {s.name!r} {describe(s.dtype, s.shape)}" for s in config.outputs
             if any(d < 0 for d in s.shape[1:])]
    if free:
        raise InvalidArgument(f"{config.where}: a model on a GPU needs fixed dims past dim 0 (the core allocates its "
                              f"device buffers for max_batch_size rows at load); free dims in " + ", ".join(free))


def row_bytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of one row (dims past dim 0; a free dim counts as 1)."""
    return int(np.dtype(dtype).itemsize * math.prod(max(int(d), 1) for d in shape[1:]))


def core_buffer_bytes(config: ModelConfig, instances: int) -> int:
    """What the core allocates for a GPU model, per the GPU lane's layout: for max_batch_size rows
    per executor, request-facing inputs twice (pinned staging, device), backend-facing inputs once
    (device; after preprocessing), outputs twice (device, pinned). A free image height/width
    counts as 1 (the core grows those buffers when larger images arrive)."""
    rows = int(config.batching.max_batch_size)
    request = sum(row_bytes(s.dtype, s.shape) for s in config.inputs)
    backend = sum(row_bytes(s.dtype, s.shape) for s in backend_inputs(config))
    outputs = sum(row_bytes(s.dtype, s.shape) for s in config.outputs)
    return rows * (2 * request + backend + 2 * outputs) * int(instances)


def mem_info(index: int) -> Optional[tuple]:
    """(free, total) bytes of CUDA device `index` from the core, None where it cannot say."""
    info = getattr(_core, "cuda_mem_info", None)
    if info is None:
        return None
    try:
        free, total = info(int(index))
    except Exception:  # no device: the caller's message stands without the numbers
        return None
    return int(free), int(total)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is torch's (or a CUDA runtime's) out-of-memory error."""
    names = {type(c).__name__ for c in _chain(e)}
    return bool(names & {"OutOfMemoryError"}) or any("out of memory" in str(c).lower() for c in _chain(e))


def out_of_memory(e: BaseException, where: str, index: int, doing: str) -> GpuOutOfMemory:
    """The GpuOutOfMemory (RESOURCE_EXHAUSTED) for a CUDA out-of-memory error while `doing`."""
    info = mem_info(index)
    left = f" ({format_bytes(info[0])} free of {format_bytes(info[1])})" if info else ""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return GpuOutOfMemory(f"{where}: cuda:{index} ran out of memory while {doing}{left}: {first}; unload other "
                          f"versions, lower batching.max_batch_size or instances, or use a device with more memory")


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; what budget and memory messages print."""
    n = int(n)
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _chain(e: Optional[BaseException]):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__
