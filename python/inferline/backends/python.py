"""Backends implemented by the core (echo) or by a Python callable."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .. import _core
from ..errors import InvalidArgument


class PythonBackend:
    """Calls ``fn({input name: array})`` once per batch, from an executor thread.

    The arrays are zero-copy views of the batch buffers (dim 0 = the batch's
    rows, after preprocessing) and are valid only during the call. ``fn``
    returns ``{output name: array}``, a sequence of arrays in declared output
    order, or one array when the model has one output; dim 0 must equal the
    batch's rows. The GIL is held only during the call.
    """

    def __init__(self, fn: Callable[[Mapping[str, Any]], Any]):
        if not callable(fn):
            raise InvalidArgument(f"PythonBackend needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def create(self, config) -> _core.Backend:
        return _core.python_backend(self.fn, list(config.output_names))


class EchoBackend:
    """Native backend: output i is a copy of input i. Measures the engine's own overhead."""

    def create(self, config) -> _core.Backend:
        if len(config.outputs) > len(config.inputs):
            raise InvalidArgument(f"{config.where}: EchoBackend needs at least as many inputs as outputs")
        return _core.echo_backend(list(config.output_names))


def as_backend(backend: Any):
    """A backend factory from a factory or a plain callable."""
    if hasattr(backend, "create"):
        return backend
    if callable(backend):
        return PythonBackend(backend)
    raise InvalidArgument(f"not a backend: {type(backend).__name__} (give a callable or an object with create())")
