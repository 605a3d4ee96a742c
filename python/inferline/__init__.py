"""inferline: real-time model serving with a native micro-batching core."""

from . import errors
from .backends import EchoBackend, PythonBackend
from .config import BatchingConfig, ImagePreprocess, ModelConfig, TabularPreprocess, TensorSpec
from .engine import Engine, ModelHandle

__version__ = "0.1.0"

__all__ = [
    "BatchingConfig", "EchoBackend", "Engine", "ImagePreprocess", "ModelConfig", "ModelHandle",
    "PythonBackend", "TabularPreprocess", "TensorSpec", "errors", "__version__",
]
