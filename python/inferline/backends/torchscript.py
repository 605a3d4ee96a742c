"""TorchScript backend: a module from ``torch.jit.save``, run once per batch on CPU or CUDA.

    backend = make_backend(BackendSpec("torchscript", device="cpu", threads=2), "model.pt")
    engine.load(config, backend)

Loading uses ``torch.jit.load`` only. It reads the TorchScript archive's code and
tensors with TorchScript's own restricted reader, which builds no arbitrary
Python objects; ``torch.load`` (pickle) is never called, so a model file cannot
run code at load. A file that is not a TorchScript archive is refused.

Each batch calls the module with one tensor per declared input, positionally,
in declared order (``torch.from_numpy``: zero-copy on CPU), under
``torch.inference_mode()``. The module returns a Tensor (one output), a
tuple/list in declared output order, or a dict keyed by output name (extra keys
ignored). At load the module runs once on a 1-row and a 2-row zero batch and
its outputs are checked against the declared outputs (count, dtype, rank, rows,
fixed dims).

On a CUDA device ("cuda" or "cuda:N") the module is loaded there and checked the same way
(with ordinary torch CUDA tensors), then served through the core's device backend
(backends/gpu.py): the core stages each batch in device memory on its executor's CUDA stream
and ``torch_cuda.DeviceRunner`` runs the module on that stream over the buffers, zero-copy,
with CUDA graphs per ``cuda_graphs`` ("buckets" unless set; torch_cuda.py). ``cuda_graphs``
other than "off" is refused on the CPU. A CUDA out-of-memory error while loading is a
GpuOutOfMemory (RESOURCE_EXHAUSTED) naming the device and its free memory.

``threads`` sets torch's intra-op threads (unset: ``serving_threads()``, 1 on up to 4
cores, not torch's every core) and ``inter_op_threads`` its inter-op threads; both are
process-wide in torch, so the last model loaded sets them (torch allows inter-op
threads to change only before its first parallel work).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, List, Optional, Sequence

import numpy as np

from .. import _core
from ..config import ModelConfig
from ..errors import FailedPrecondition, InferlineError, InvalidArgument
from . import gpu
from .signature import backend_inputs, describe
from .spec import BackendSpec, serving_threads
from .torch_cuda import DeviceRunner, OutputMismatch as _OutputMismatch


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise FailedPrecondition("the torchscript backend needs PyTorch: pip install 'inferline[torch]'") from e
    return torch


class TorchScriptBackend:
    """Backend factory for a TorchScript archive; ``create(config)`` loads the module per load."""

    name = "torchscript"

    def __init__(self, spec: BackendSpec, artifact_path):
        self.spec = spec
        self.artifact_path = os.fspath(artifact_path)
        self.module = None
        """The module of the latest create() (for inspection), None before."""
        self.runner: Optional[DeviceRunner] = None
        """On a CUDA device: the device runner of the latest create() (its CUDA graph counters)."""

    @property
    def gpu_device(self) -> Optional[int]:
        """The CUDA device this backend's models run on; None on the CPU (backends/gpu.py)."""
        try:
            return gpu.cuda_index(self.spec.device, "torchscript backend")
        except InvalidArgument:
            return None  # create() refuses it, naming the model

    def create(self, config: ModelConfig) -> _core.Backend:
        torch = _import_torch()
        where = config.where
        device = _device(torch, self.spec.device, where)
        _set_threads(torch, self.spec, where)
        if device.type == "cuda":
            return self._create_on_cuda(torch, device, config)
        if self.spec.cuda_graphs not in (None, "off"):
            raise InvalidArgument(f"{where}: backend.cuda_graphs = {self.spec.cuda_graphs!r} needs backend.device "
                                  f"'cuda' or 'cuda:N' (it is {self.spec.device!r})")
        module = _load(torch, self.artifact_path, device, where)
        module.eval()
        run = _Runner(torch, module, device, config)
        _check_signature(config, run, os.path.basename(self.artifact_path))
        self.module = module
        return _core.python_backend(run, list(config.output_names))

    def _create_on_cuda(self, torch, device, config: ModelConfig) -> _core.Backend:
        """Loads and checks the module on the device, then hands the core a device backend."""
        where, index = config.where, device.index
        gpu.require_core_device(index, where)
        gpu.check_fixed_dims(config)
        try:
            with torch.cuda.device(index):
                module = _load(torch, self.artifact_path, device, where)
                module.eval()
                _check_signature(config, _Runner(torch, module, device, config), os.path.basename(self.artifact_path))
                torch.cuda.synchronize(index)
        except InferlineError:
            raise
        except Exception as e:  # torch's CUDA errors: said as ours, never a bare RuntimeError
            artifact = os.path.basename(self.artifact_path)
            if gpu.is_out_of_memory(e):
                raise gpu.out_of_memory(e, where, index, f"loading {artifact}") from e
            raise FailedPrecondition(f"{where}: loading {artifact} on cuda:{index} failed: {type(e).__name__}: "
                                     f"{_brief(e)}") from e
        names = list(config.output_names)
        runner = DeviceRunner(torch, module, index, names, lambda out: _select(torch, out, names),
                              self.spec.cuda_graphs or "buckets", config.batching.max_batch_size)
        backend = gpu.device_backend(runner, names, index)
        self.module, self.runner = module, runner
        return backend

    def cuda_graph_stats(self) -> dict:
        """The CUDA graph counters of the latest create() on a CUDA device ({} otherwise):
        mode, graphs_captured, graph_replays, eager_runs, capture_failures."""
        return self.runner.stats() if self.runner is not None else {}

    def describe(self) -> dict:
        """runtime_env facts: backend, torch and numpy versions, device (and on a CUDA device its
        name and the CUDA graph mode)."""
        torch = _import_torch()
        env = {"backend": self.name, "torch": torch.__version__, "device": self.spec.device,
               "numpy": np.__version__}
        if self.runner is not None:
            env["cuda_graphs"] = self.runner.mode
            try:
                env["gpu"] = torch.cuda.get_device_name(self.runner.index)
            except Exception:  # a fact for the record, not worth failing a load over
                env["gpu"] = "?"
        return env


# ---- loading ------------------------------------------------------------------------
def _device(torch, text: str, where: str):
    index = gpu.cuda_index(text, where)
    if index is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FailedPrecondition(f"{where}: backend.device is {text!r} but torch {torch.__version__} "
                                 f"sees no CUDA device")
    count = torch.cuda.device_count()
    if index >= count:
        raise FailedPrecondition(f"{where}: backend.device is {text!r} but there are {count} CUDA device(s)")
    return torch.device("cuda", index)


def _set_threads(torch, spec: BackendSpec, where: str) -> None:
    torch.set_num_threads(int(spec.threads) if spec.threads is not None else serving_threads())
    if spec.inter_op_threads is not None and torch.get_num_interop_threads() != int(spec.inter_op_threads):
        try:
            torch.set_num_interop_threads(int(spec.inter_op_threads))
        except RuntimeError as e:
            raise FailedPrecondition(f"{where}: backend.inter_op_threads = {spec.inter_op_threads}: torch "
                                     f"already runs {torch.get_num_interop_threads()} inter-op threads and "
                                     f"cannot change them once started ({e})") from e


def _load(torch, path: str, device, where: str):
    if not os.path.isfile(path):
        raise InvalidArgument(f"{where}: TorchScript model {path} does not exist")
    try:
        with warnings.catch_warnings():
            # torch 2.9+ marks TorchScript deprecated; it is still the one pickle-free format we load.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is", category=DeprecationWarning)
            return torch.jit.load(path, map_location=device)
    except Exception as e:
        if device.type == "cuda" and gpu.is_out_of_memory(e):
            raise  # the caller says so (GpuOutOfMemory), not "not a TorchScript archive"
        text = str(e).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(e).__name__  # torch's first sentence
        raise InvalidArgument(f"{where}: {path} is not a TorchScript archive that torch {torch.__version__} can "
                              f"load ({first}); export with torch.jit.script or torch.jit.trace and save "
                              f"with torch.jit.save (inferline never unpickles model files)") from e


# ---- running --------------------------------------------------------------------------
class _Runner:
    """fn({input name: array}) -> [array per declared output], what _core.python_backend calls."""

    def __init__(self, torch, module, device, config: ModelConfig):
        self.torch = torch
        self.module = module
        self.device = device
        self.on_cpu = device.type == "cpu"
        self.input_names = config.input_names
        self.output_names = config.output_names

    def __call__(self, inputs) -> List[np.ndarray]:
        arrays = [inputs[n] for n in self.input_names]
        return self.to_numpy(self.forward(arrays), arrays)

    def forward(self, arrays: Sequence[np.ndarray]) -> Any:
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(a) for a in arrays]
            if not self.on_cpu:
                args = [t.to(self.device) for t in args]
            return self.module(*args)

    def to_numpy(self, out: Any, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        tensors = _select(self.torch, out, self.output_names)
        result = []
        for name, t in zip(self.output_names, tensors):
            if not isinstance(t, self.torch.Tensor):
                raise _OutputMismatch(f"output {name!r} is a {type(t).__name__}, not a Tensor")
            a = t.detach().cpu().contiguous().numpy()
            if any(np.may_share_memory(a, x) for x in arrays):  # e.g. an identity output
                a = a.copy()
            result.append(a)
        return result


def _select(torch, out: Any, names: Sequence[str]) -> list:
    """The module's result as a list in declared output order (_OutputMismatch if it cannot be)."""
    if isinstance(out, torch.Tensor):
        found = [out]
    elif isinstance(out, (tuple, list)):
        found = list(out)
    elif isinstance(out, dict):
        missing = [n for n in names if n not in out]
        if missing:
            raise _OutputMismatch(f"the module's dict has no output(s) {', '.join(map(repr, missing))} "
                                  f"(its keys: {', '.join(map(repr, out))})")
        return [out[n] for n in names]
    else:
        raise _OutputMismatch(f"the module returned a {type(out).__name__}; expected a Tensor, a tuple/list "
                              f"in declared output order or a dict by output name")
    if len(found) != len(names):
        raise _OutputMismatch(f"the module returned {len(found)} output(s), the config declares "
                              f"{len(names)} ({', '.join(map(repr, names))})")
    return found


# ---- signature check ---------------------------------------------------------------------
def _check_signature(config: ModelConfig, run: _Runner, artifact: str) -> None:
    """Runs the module on 1- and 2-row zero batches; refuses outputs that differ from the config."""
    specs = backend_inputs(config)
    for rows in (1, 2):
        arrays = [np.zeros((rows,) + tuple(d if d > 0 else 1 for d in s.shape[1:]), s.dtype) for s in specs]
        fed = ", ".join(f"{s.name!r} {describe(a.dtype.name, a.shape)}" for s, a in zip(specs, arrays))
        try:
            out = run.forward(arrays)
        except Exception as e:
            if not run.on_cpu and gpu.is_out_of_memory(e):
                raise  # _create_on_cuda says so (GpuOutOfMemory)
            raise InvalidArgument(f"{config.where}: {artifact} failed on a {rows}-row zero batch of the declared "
                                  f"inputs ({fed}): {type(e).__name__}: {_brief(e)}") from e
        try:
            results = run.to_numpy(out, arrays)
        except (_OutputMismatch, TypeError) as e:
            raise InvalidArgument(f"{config.where}: {artifact} on inputs {fed}: {e}") from e
        problems = [_compare(spec, a, rows, artifact) for spec, a in zip(config.outputs, results)]
        problems = [p for p in problems if p]
        if problems:
            raise InvalidArgument(f"{config.where}: " + "; ".join(problems) + f" (inputs {fed})")


def _compare(spec, a: np.ndarray, rows: int, artifact: str) -> str:
    ok = a.dtype.name == spec.dtype and a.ndim == len(spec.shape) and a.ndim >= 1 and a.shape[0] == rows
    ok = ok and all(want == -1 or want == got for want, got in zip(spec.shape[1:], a.shape[1:]))
    if ok:
        return ""
    return (f"output {spec.name!r} is {describe(spec.dtype, spec.shape)} in the config but {artifact} returned "
            f"{describe(a.dtype.name, a.shape)} for a {rows}-row batch")


def _brief(e: Exception) -> str:
    """An error's first and last lines: TorchScript puts its traceback between them, the cause last."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} ... {lines[-1]}"

