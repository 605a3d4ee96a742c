"""inferline: real-time model serving with a native micro-batching core."""

from . import errors
from .backends import EchoBackend, PythonBackend
from .config import BatchingConfig, ImagePreprocess, ModelConfig, TabularPreprocess, TensorSpec
from .engine import Engine, ModelHandle

__version__ = "0.1.0"

__all__ = [
    "Answer", "BatchingConfig", "EchoBackend", "Engine", "ImagePreprocess", "ModelConfig", "ModelHandle",
    "PythonBackend", "Service", "TabularPreprocess", "TensorSpec", "errors", "__version__",
]


def __getattr__(name: str):
    # The Service brings the registry and model lifecycle along: imported on first use only.
    if name in ("Service", "Answer"):
        from . import service
        return getattr(service, name)
    raise AttributeError(f"module 'inferline' has no attribute {name!r}")
