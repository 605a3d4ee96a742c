"""Model lifecycle, between the registry (storage) and the engine: the package format and its
schema (``package``), loading, warm-up, golden check and fingerprint (``loader``), and the
operations that join them (``service``: push, load a stored version, open the default registry)."""

from .loader import GoldenMismatch, LoadFailed, LoadReport, load_into_engine
from .package import ModelPackage, load_package
from .service import load_version, open_registry, push

__all__ = ["GoldenMismatch", "LoadFailed", "LoadReport", "ModelPackage", "load_into_engine", "load_package",
           "load_version", "open_registry", "push"]
