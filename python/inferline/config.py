"""Typed model configuration: signature, batching policy, preprocessing.

These are plain frozen dataclasses with a docstring under each field. The
native core validates the whole config again when a model loads and names the
field at fault; this module converts and catches what is easier to say in
Python (unknown keys, wrong types).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import InvalidArgument

# KServe v2 datatype names -> NumPy names.
KSERVE_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TO_NUMPY.items()}


def normalize_dtype(dtype: Any, where: str) -> str:
    """A NumPy dtype name ("float32") from a KServe name, a NumPy name or a dtype."""
    if isinstance(dtype, str) and dtype.upper() in KSERVE_TO_NUMPY:
        return KSERVE_TO_NUMPY[dtype.upper()]
    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise InvalidArgument(f"{where}: unknown dtype {dtype!r}") from e
    if name not in NUMPY_TO_KSERVE:
        raise InvalidArgument(f"{where}: unsupported dtype {name}")
    return name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    """Tensor name as callers and the backend use it."""
    dtype: str
    """NumPy dtype name (KServe names such as "FP32" are accepted and normalised)."""
    shape: tuple
    """Dims; the first is -1 (the rows of a request/batch)."""

    def __post_init__(self):
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype, f"tensor {self.name!r}"))
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def to_core(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    """Most rows in one batch."""
    max_queue_delay_us: int = 5000
    """Longest time the oldest request waits for a batch to fill."""
    preferred_batch_sizes: tuple = ()
    """Batch sizes (rows) dispatched as soon as they are reached."""
    mode: str = "deadline_aware"
    """"deadline_aware" (close a batch early to meet the tightest deadline) or "fixed_delay"."""
    deadline_slack_us: int = 200
    """Margin kept before a deadline for gather, scatter and wake-up."""

    def to_core(self) -> dict:
        d = dataclasses.asdict(self)
        d["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return d


@dataclass(frozen=True)
class TabularPreprocess:
    """float32 rows: NaN -> nan_fill, then (x - mean) / std, then clip to [clip_lo, clip_hi]."""

    mean: tuple
    """Per feature, or one value for all."""
    std: tuple
    """Per feature, or one value for all; finite and non-zero."""
    nan_fill: float = 0.0
    """Raw value that replaces NaN inputs before normalising."""
    clip_lo: float = -math.inf
    clip_hi: float = math.inf

    def to_core(self) -> dict:
        return {"kind": "tabular", "mean": [float(v) for v in np.ravel(self.mean)],
                "std": [float(v) for v in np.ravel(self.std)], "nan_fill": float(self.nan_fill),
                "clip_lo": float(self.clip_lo), "clip_hi": float(self.clip_hi)}


@dataclass(frozen=True)
class ImagePreprocess:
    """uint8 NHWC images: bilinear resize to height x width, (v - mean) / std per channel, NCHW float32."""

    height: int
    width: int
    mean: tuple
    """Per channel, in the 0..255 pixel scale (or one value for all)."""
    std: tuple
    """Per channel, in the 0..255 pixel scale; finite and non-zero."""

    def to_core(self) -> dict:
        return {"kind": "image", "height": int(self.height), "width": int(self.width),
                "mean": [float(v) for v in np.ravel(self.mean)], "std": [float(v) for v in np.ravel(self.std)]}


Preprocess = Union[TabularPreprocess, ImagePreprocess]
_PREPROCESS_KINDS = {"tabular": TabularPreprocess, "image": ImagePreprocess}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    """Model name."""
    inputs: tuple
    """TensorSpec per input, as callers send them."""
    outputs: tuple
    """TensorSpec per output, as the backend returns them."""
    version: int = 1
    """Version number of this model."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """Micro-batching policy."""
    preprocessing: Mapping = field(default_factory=dict)
    """Input name -> TabularPreprocess or ImagePreprocess, fused into the batch gather."""
    instances: int = 1
    """Batches executed in parallel."""
    queue_capacity: int = 4096
    """Requests that may wait per priority level before RESOURCE_EXHAUSTED."""
    priority_levels: int = 2
    """Priorities 0..levels-1; higher is served first."""

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(_as_spec(s) for s in self.inputs))
        object.__setattr__(self, "outputs", tuple(_as_spec(s) for s in self.outputs))
        if isinstance(self.batching, Mapping):
            object.__setattr__(self, "batching", _build(BatchingConfig, self.batching, f"{self.where}: batching"))
        prep = {}
        for name, spec in dict(self.preprocessing).items():
            if name not in self.input_names:
                raise InvalidArgument(f"{self.where}: preprocessing names unknown input {name!r}")
            prep[name] = _as_preprocess(spec, f"{self.where}: preprocessing.{name}")
        object.__setattr__(self, "preprocessing", prep)

    @property
    def where(self) -> str:
        return f"model {self.name!r} version {self.version}"

    @property
    def input_names(self) -> tuple:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple:
        return tuple(s.name for s in self.outputs)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        """Builds a config from plain data (a parsed JSON/YAML file)."""
        return _build(cls, d, f"model config {d.get('name', '?')!r}")

    def to_core(self) -> dict:
        prep = [self.preprocessing[s.name].to_core() if s.name in self.preprocessing else None for s in self.inputs]
        return {"name": self.name, "version": int(self.version), "inputs": [s.to_core() for s in self.inputs],
                "outputs": [s.to_core() for s in self.outputs], "preprocessing": prep,
                "batching": self.batching.to_core(), "instances": int(self.instances),
                "queue_capacity": int(self.queue_capacity), "priority_levels": int(self.priority_levels)}


def _build(cls, data: Mapping, where: str):
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        return cls(**data)
    except TypeError as e:
        raise InvalidArgument(f"{where}: {e}") from e


def _as_spec(s: Union[TensorSpec, Mapping, Sequence]) -> TensorSpec:
    if isinstance(s, TensorSpec):
        return s
    if isinstance(s, Mapping):
        return _build(TensorSpec, s, f"tensor {s.get('name', '?')!r}")
    return TensorSpec(*s)


def _as_preprocess(spec: Any, where: str) -> Optional[Preprocess]:
    if isinstance(spec, (TabularPreprocess, ImagePreprocess)):
        return spec
    if isinstance(spec, Mapping):
        data = dict(spec)
        kind = data.pop("kind", None)
        if kind not in _PREPROCESS_KINDS:
            raise InvalidArgument(f"{where}.kind must be 'tabular' or 'image', got {kind!r}")
        return _build(_PREPROCESS_KINDS[kind], data, where)
    raise InvalidArgument(f"{where}: expected TabularPreprocess, ImagePreprocess or a mapping")
