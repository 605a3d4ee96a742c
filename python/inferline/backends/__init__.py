"""Backends: what runs a batch. A backend factory has ``create(config) -> _core.Backend``.

``make_backend(BackendSpec(...), artifact_path)`` returns the factory of a model
runtime by name ("onnxruntime", "torchscript"); further runtimes plug in with
``register_runtime``. Runtime libraries are imported only when a model needs them.
"""

from .python import EchoBackend, PythonBackend, as_backend
from .spec import BackendSpec, make_backend, register_runtime, runtime_names

__all__ = ["BackendSpec", "EchoBackend", "PythonBackend", "as_backend", "make_backend", "register_runtime",
           "runtime_names"]
