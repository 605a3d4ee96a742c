"""Backends: what runs a batch. A backend factory has ``create(config) -> _core.Backend``.

Real runtimes (ONNX Runtime, TorchScript) plug in here as further factories.
"""

from .python import EchoBackend, PythonBackend, as_backend

__all__ = ["EchoBackend", "PythonBackend", "as_backend"]
