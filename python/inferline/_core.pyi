"""Type stubs for ``inferline._core``, the native binding (csrc/bindings/module.cpp).

Kept in step with the binding by tests/python/test_core_stubs.py. The binding
raises only ``CoreError``; ``inferline.errors.from_core_error`` maps it to the
``inferline.errors`` classes.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

STATUS_NAMES: Dict[int, str]
"""gRPC status number -> name ("INVALID_ARGUMENT")."""

class CoreError(Exception):
    """A non-OK core status; str() is the message."""

    code: int
    """The gRPC status number."""
    message: str
    """Names the model, version and field at fault."""

class Backend:
    """What runs a batch; made by the functions below or a backend factory."""

def echo_backend(outputs: List[str]) -> Backend:
    """Native backend copying input i to output i (measures the engine's own overhead)."""

def python_backend(fn: Callable[[Dict[str, np.ndarray]], Any], outputs: List[str]) -> Backend:
    """Backend calling fn({input: array}) once per batch; returns {output: array} or arrays in order."""

# (tag, status code, message or None, outputs in declared order, queue_us, compute_us)
Answer = Tuple[int, int, Optional[str], Tuple[np.ndarray, ...], int, int]

class Sink:
    """Where answers queue; its eventfd is readable when some are waiting (once per batch)."""

    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    def drain(self) -> List[Answer]: ...
    def wait(self, timeout_ms: int) -> bool:
        """Blocks (GIL released) until answers wait or timeout_ms passes; True if readable."""

class Model:
    """One loaded version, as ``Engine.get`` finds it."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def host(self) -> Any:
        """The object passed as ``host`` when the version was loaded (None if none)."""
    def now_us(self) -> int: ...
    def stats(self) -> Dict[str, Any]: ...
    def reset_stats(self) -> None: ...

class Engine:
    """The loaded versions by (name, version); version 0 means the latest loaded."""

    def __init__(self) -> None: ...
    def load(self, config: Mapping[str, Any], backend: Backend, host: Any = None) -> None:
        """CoreError ALREADY_EXISTS if the version is loaded."""
    def replace(self, config: Mapping[str, Any], backend: Backend, host: Any = None, drain: bool = True) -> None:
        """Publishes the new model in place of the loaded version, then drains (or cancels) the old one."""
    def unload(self, name: str, version: int = 0, drain: bool = True) -> None: ...
    def get(self, name: str, version: int = 0) -> Model:
        """CoreError NOT_FOUND naming what is loaded."""
    def list(self) -> List[Tuple[str, int]]: ...
    def submit(self, name: str, version: int, inputs: Mapping[str, Any], tag: int, sink: Sink, priority: int,
               timeout_us: int, keep: List[Any]) -> None:
        """inputs: {input name: array-like}; timeout_us relative (0 = none). Appends the arrays the core
        reads (copies where an input was not a C-contiguous array) to `keep`, which must outlive the answer."""
    def shutdown(self, drain: bool = True) -> None: ...
    def now_us(self) -> int: ...
