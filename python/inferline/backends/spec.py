"""Backend settings from a model package, and the by-name registry of runtimes.

A model package names its runtime (``onnxruntime`` or ``torchscript``) and the
runtime's settings; ``make_backend(spec, artifact_path)`` returns a backend
factory (an object with ``create(config) -> _core.Backend``) that the engine
calls once per loaded version. New runtimes register with ``register_runtime``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Union

from ..errors import InvalidArgument


def serving_threads(cores: int = 0) -> int:
    """Intra-op threads for a runtime whose spec leaves ``threads`` unset: 1 on up to 4 cores, a
    quarter of the cores above, at most 8. Runtimes' own defaults (every core) suit one big batch on
    an idle machine, not micro-batches beside the server's event loop. `cores`: the CPUs this process
    may use (0: ask the OS)."""
    if not cores:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if cores <= 4 else min(8, cores // 4)


CUDA_GRAPH_MODES = (None, "off", "buckets", "fixed")
"""BackendSpec.cuda_graphs values (None: the runtime's default)."""


@dataclass(frozen=True)
class BackendSpec:
    name: str = "onnxruntime"
    """Runtime: "onnxruntime" or "torchscript"."""
    threads: Optional[int] = None
    """Intra-op threads (None: ``serving_threads()``)."""
    inter_op_threads: Optional[int] = None
    """Inter-op threads (None: the runtime's default)."""
    providers: tuple = ()
    """ONNX Runtime execution providers in order of preference (empty: CPU). Providers the
    installed onnxruntime lacks are refused at load, naming them."""
    device: str = "cpu"
    """"cpu", "cuda" or "cuda:N". ONNX Runtime uses it only when providers is empty ("cuda:N" then
    means CUDAExecutionProvider on device N, CPU for the rest)."""
    cuda_graphs: Optional[str] = None
    """CUDA graphs of a torchscript model on a CUDA device: "off" (every batch launches its kernels
    from Python), "buckets" (a graph per power-of-two batch size up to max_batch_size) or "fixed"
    (one graph of max_batch_size rows: every batch runs the same kernels, so a row's result is
    bitwise the same at every batch size and position). None: "buckets" on a CUDA device. A value
    other than "off" is refused on the CPU and by runtimes without it (backends/torch_cuda.py)."""
    graph_optimization: str = "all"
    """ONNX Runtime graph optimisation level: "disable", "basic", "extended" or "all"."""
    native: Optional[bool] = None
    """ONNX Runtime on the CPU through inferline's native backend (its C API from the core's executor
    threads: no Python and no GIL per batch). None: where this build has it (``_core.NATIVE_ORT``)
    and the CPU provider is the one used, else the onnxruntime Python API; True: required (refused
    at load where unavailable); False: the Python API. Both run the same library and kernels."""
    options: dict = field(default_factory=dict)
    """Extra runtime-specific options (ONNX Runtime session config entries): name -> string,
    integer, number or boolean (runtimes pass them on as text)."""

    def __post_init__(self):
        object.__setattr__(self, "providers", tuple(self.providers))
        for key in ("threads", "inter_op_threads"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise InvalidArgument(f"backend.{key} must be >= 1, got {value}")
        _check_options(self.options)
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise InvalidArgument(f"backend.cuda_graphs must be off|buckets|fixed, got {self.cuda_graphs!r}")
        if self.graph_optimization not in ("disable", "basic", "extended", "all"):
            raise InvalidArgument(f"backend.graph_optimization must be disable|basic|extended|all, "
                                  f"got {self.graph_optimization!r}")


def _check_options(options) -> None:
    """Option values must be scalars: a runtime stringifies them, and a nested value (a YAML alias
    bomb, say) could take minutes and gigabytes to turn into text."""
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"backend.options must be a mapping of name -> value, got {type(options).__name__}")
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise InvalidArgument(f"backend.options.{str(key)[:80]} must be a string, integer, number or boolean, "
                                  f"got {type(value).__name__}")


_RUNTIMES: Dict[str, Union[Callable, str]] = {}


def register_runtime(name: str, factory: Union[Callable, str]) -> None:
    """factory(spec: BackendSpec, artifact_path: str) -> backend factory with create(config), or its
    import path "package.module:attribute", imported when a model first needs that runtime."""
    _RUNTIMES[name] = factory


def runtime_names() -> tuple:
    return tuple(sorted(_RUNTIMES))


def make_backend(spec: BackendSpec, artifact_path: str):
    factory = _RUNTIMES.get(spec.name)
    if factory is None:
        raise InvalidArgument(f"backend.name: unknown backend {spec.name!r} (known: {', '.join(runtime_names())})")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = _RUNTIMES[spec.name] = getattr(importlib.import_module(module), attr)
    return factory(spec, artifact_path)
