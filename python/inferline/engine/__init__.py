"""The in-process engine: load model versions, infer blocking, by future or asyncio."""

from .dispatch import RoutedResult
from .engine import Engine, ModelHandle

__all__ = ["Engine", "ModelHandle", "RoutedResult"]
