"""What a backend sees of a model's signature, and how backends print tensors in errors.

Preprocessing is fused into the core's batch gather, so a backend never sees the
request-facing input of a preprocessed tensor: it sees what ResolvePreprocess
(csrc/include/inferline/preprocess.h) returns. ``backend_inputs`` is that rule
in Python, in one place, for backends that check a model's graph at load:

    none     unchanged
    tabular  float32, same shape
    image    uint8 NHWC [-1, H, W, C] -> float32 NCHW [-1, C, height, width]
"""

from __future__ import annotations

from typing import Iterable, Optional

from ..config import ImagePreprocess, ModelConfig, TabularPreprocess, TensorSpec
from ..errors import InvalidArgument


def backend_input(config: ModelConfig, spec: TensorSpec) -> TensorSpec:
    """The backend-facing spec of one request-facing input of `config`."""
    prep = config.preprocessing.get(spec.name)
    if prep is None:
        return spec
    if isinstance(prep, TabularPreprocess):
        return TensorSpec(spec.name, "float32", spec.shape)
    if isinstance(prep, ImagePreprocess):
        if len(spec.shape) != 4:
            raise InvalidArgument(f"{config.where} input {spec.name!r}: preprocessing.image needs a uint8 NHWC "
                                  f"input, got {describe(spec.dtype, spec.shape)}")
        return TensorSpec(spec.name, "float32", (spec.shape[0], spec.shape[3], prep.height, prep.width))
    raise InvalidArgument(f"{config.where} input {spec.name!r}: unknown preprocessing {type(prep).__name__}")


def backend_inputs(config: ModelConfig) -> tuple:
    """The backend-facing inputs of `config`, in declared order."""
    return tuple(backend_input(config, s) for s in config.inputs)


def preprocess_note(config: ModelConfig, name: str) -> str:
    """" (after image preprocessing)" for a preprocessed input, else ""."""
    prep = config.preprocessing.get(name)
    if prep is None:
        return ""
    kind = "image" if isinstance(prep, ImagePreprocess) else "tabular"
    return f" (after {kind} preprocessing)"


def shape_text(shape: Optional[Iterable]) -> str:
    """[-1, 64] for ints; symbolic dims quoted (['N', 32]); unknown dims as ?; no shape at all as [...]."""
    if shape is None:
        return "[...]"
    parts = []
    for d in shape:
        if d is None:
            parts.append("?")
        elif isinstance(d, str):
            parts.append(repr(d))
        else:
            parts.append(str(int(d)))
    return "[" + ", ".join(parts) + "]"


def describe(dtype: str, shape) -> str:
    """'float32 [-1, 64]': the config's vocabulary (NumPy dtype names)."""
    return f"{dtype} {shape_text(shape)}"
