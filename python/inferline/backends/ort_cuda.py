"""ONNX Runtime on a CUDA device with IO binding: the session reads and writes the core's device
buffers in place (no host copies in Python).

UNTESTED: neither the CI machine nor the device machine has onnxruntime-gpu (the CUDA execution
provider), so this path has never run. It is kept small and guarded: without
CUDAExecutionProvider a cuda spec is refused at load naming the missing provider
(onnxruntime.py ``_providers``).

When it applies (``OnnxRuntimeBackend.gpu_device``): ``backend.device`` is "cuda" or "cuda:N",
``providers`` is empty (explicit providers keep the host path: arrays in, arrays out) and a CUDA
stream can be synchronised from Python (``gpu.stream_synchronizer``: torch, or the core). Per
batch the runner waits for the executor's stream (the core's copy-in and preprocessing; ONNX
Runtime computes on a stream of its own), binds every input and output to its DeviceArray and
calls ``run_with_iobinding``, which returns once ONNX Runtime's stream is done, so the core's copy
back on its stream reads finished outputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .. import _core
from ..config import ModelConfig
from ..errors import FailedPrecondition
from . import gpu


class IoBindingRunner:
    """fn(inputs, outputs, stream) for ``_core.device_backend``: one ``run_with_iobinding`` per batch."""

    def __init__(self, session, input_names: Sequence[str], output_names: Sequence[str],
                 sync: Callable[[int], None]):
        self.session = session
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.sync = sync

    def __call__(self, inputs, outputs, stream: int) -> None:
        self.sync(stream)  # the core's copy-in and preprocessing are done before ONNX Runtime reads
        binding = self.session.io_binding()
        for name, a in zip(self.input_names, inputs):
            binding.bind_input(name, "cuda", int(a.device), np.dtype(a.dtype), list(a.shape), int(a.ptr))
        for name, o in zip(self.output_names, outputs):
            binding.bind_output(name, "cuda", int(o.device), np.dtype(o.dtype), list(o.shape), int(o.ptr))
        self.session.run_with_iobinding(binding)


def device_backend(session, config: ModelConfig, index: int) -> _core.Backend:
    """The core's device backend running `session` (CUDAExecutionProvider on device `index`)."""
    gpu.require_core_device(index, config.where)
    gpu.check_fixed_dims(config)
    sync = gpu.stream_synchronizer(index)
    if sync is None:
        raise FailedPrecondition(f"{config.where}: ONNX Runtime on cuda:{index} with IO binding needs torch (to "
                                 f"wait for the core's CUDA stream): pip install 'inferline[torch]', or set "
                                 f"backend.providers to run with host arrays")
    runner = IoBindingRunner(session, config.input_names, config.output_names, sync)
    return gpu.device_backend(runner, config.output_names, index)
