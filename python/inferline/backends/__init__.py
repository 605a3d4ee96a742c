"""Backends: what runs a batch. A backend factory has ``create(config) -> _core.Backend``.

``make_backend(BackendSpec(...), artifact_path)`` returns the factory of a model
runtime by name ("onnxruntime", "torchscript"); further runtimes plug in with
``register_runtime`` (this package registers the built-ins; no runtime module imports the
registry back). Runtime libraries are imported only when a model needs them.
"""

from .python import EchoBackend, PythonBackend, as_backend
from .spec import BackendSpec, make_backend, register_runtime, runtime_names

# The built-in runtimes, by import path: each runtime library is imported when a model first needs it.
register_runtime("onnxruntime", "inferline.backends.onnxruntime:OnnxRuntimeBackend")
register_runtime("torchscript", "inferline.backends.torchscript:TorchScriptBackend")

__all__ = ["BackendSpec", "EchoBackend", "PythonBackend", "as_backend", "make_backend", "register_runtime",
           "runtime_names"]
