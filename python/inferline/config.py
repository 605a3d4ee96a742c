"""Typed model configuration: signature, batching policy, preprocessing, breaker, cache, SLO, canary.

These are plain frozen dataclasses with a docstring under each field, and this
module is the one description of a model config: ``LIMITS`` holds the bounds
the native core enforces at load (the core is the authority; tests/python/
test_config_schema.py reads them back from csrc/), and ``config_schema()``
derives the JSON Schema of a package's config part from the dataclasses and
``LIMITS``. The core validates the whole config again when a model loads and
names the field at fault; this module converts and catches what is easier to
say in Python (unknown keys, wrong types, dtype spellings). ``breaker``,
``cache``, ``slo`` and ``canary`` are routing and rollout policy, not part of the
engine's model config: the core never sees them at load (``to_core`` leaves them out), so
this module checks their ``LIMITS`` itself. The routing policy hands breaker and
cache to the core's Router; slo and canary stay in Python (rollout/: the load-test
gate and the canary analysis). ``gpu`` is checked here too: the core gets only what it
implies for a model whose backend runs on a CUDA device (``to_core(gpu_device=N)``).

Dtypes are NumPy names ("float32"); the KServe wire names ("FP32") belong to
the server (server/codec.py).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InvalidArgument

# The dtypes a tensor may have, by NumPy name (the core's DataType names).
DTYPES = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
          "float16", "float32", "float64")
# KServe-style spellings ("FP32", "INT64"), recognised only to say which NumPy name to use.
_WIRE_SPELLINGS = {("FP" + n[5:] if n.startswith("float") else n.upper()): n for n in DTYPES}

_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
# "Class.field" -> (minimum, maximum), inclusive; None = unbounded. For a sequence
# field the bound applies to each item. These are the core's checks at load
# (csrc/src/model.cpp CheckScheduling, batch_policy.cpp, preprocess.cpp CheckSide)
# and C++ field widths (uint32_t, uint64_t): change them there first.
LIMITS = {
    "ModelConfig.instances": (1, 64),
    "ModelConfig.queue_capacity": (1, 1 << 22),         # kMaxQueueCapacity (model.h)
    "ModelConfig.priority_levels": (1, 16),
    "BatchingConfig.max_batch_size": (1, _U32_MAX),
    "BatchingConfig.max_queue_delay_us": (0, _U64_MAX),
    "BatchingConfig.preferred_batch_sizes": (1, _U32_MAX),  # also <= max_batch_size (core)
    "BatchingConfig.deadline_slack_us": (0, _U64_MAX),
    "QueueConfig.target_us": (0, _U64_MAX),
    "QueueConfig.interval_us": (1, _U64_MAX),
    "ImagePreprocess.height": (1, 32768),               # kMaxImageSide (preprocess.h)
    "ImagePreprocess.width": (1, 32768),
    # Routing policy, checked here (the core never loads it): BreakerConfig::Validate's bounds
    # (circuit_breaker.cpp), tightened to sane maxima that fit its uint32_t / uint64_t fields.
    "BreakerConfig.consecutive_failures": (0, 1_000_000),
    "BreakerConfig.error_rate": (0.0, 1.0),             # [0, 1): see EXCLUSIVE_MAXIMUM
    "BreakerConfig.min_requests": (0, 1_000_000_000),
    "BreakerConfig.window_us": (0, _I64_MAX),
    "BreakerConfig.open_us": (0, _I64_MAX),
    "BreakerConfig.half_open_probes": (1, 1_000_000),
    "CacheConfig.max_bytes": (0, 1 << 40),
    # Rollout policy, checked here and used only in Python (rollout/): sane bounds, no core field.
    "SloConfig.peak_rps": (0.0, 1e7),                  # (0, ...]: see EXCLUSIVE_MINIMUM; None allowed
    "SloConfig.p99_ms": (0.0, 3_600_000.0),             # (0, an hour]
    "SloConfig.max_error_rate": (0.0, 1.0),
    "SloConfig.gate_seconds": (0.0, 3600.0),            # (0, an hour]
    "CanaryConfig.max_error_rate_increase": (0.0, 1.0),
    "CanaryConfig.max_p99_ratio": (1.0, 1000.0),        # below 1 the canary must beat stable to pass
    "CanaryConfig.p99_slack_ms": (0.0, 3_600_000.0),
    "CanaryConfig.min_agreement": (0.0, 1.0),
    "CanaryConfig.max_accuracy_drop": (0.0, 1.0),
    "CanaryConfig.min_requests": (1, 1_000_000_000),
    "CanaryConfig.min_pairs": (1, 1_000_000_000),
    "CanaryConfig.min_labels": (1, 1_000_000_000),
    "CanaryConfig.mirror_share": (0.0, 100.0),          # percent
    "CanaryConfig.max_copies_per_s": (0.0, 1e6),
    "LoggingConfig.sample_rate": (0.0, 1.0),            # a share of requests, used only by the server's log
}
# LIMITS keys whose maximum is excluded: the value must be below it.
EXCLUSIVE_MAXIMUM = frozenset({"BreakerConfig.error_rate"})
# LIMITS keys whose minimum is excluded: the value must be above it.
EXCLUSIVE_MINIMUM = frozenset({"SloConfig.peak_rps", "SloConfig.p99_ms", "SloConfig.gate_seconds"})
# "Class.field" -> (fewest, most) items of a sequence field; None = unbounded.
LENGTHS = {
    "TensorSpec.shape": (1, 8),                         # Shape::kMaxRank (tensor.h)
    "TensorSpec.name": (1, None),                       # characters
    "ModelConfig.inputs": (1, None),
    "ModelConfig.outputs": (1, None),
    "TabularPreprocess.mean": (1, None),
    "TabularPreprocess.std": (1, None),
    "ImagePreprocess.mean": (1, None),
    "ImagePreprocess.std": (1, None),
}


def normalize_dtype(dtype: Any, where: str) -> str:
    """A NumPy dtype name ("float32") from a NumPy name, a NumPy type or a dtype."""
    if isinstance(dtype, str) and dtype not in DTYPES and dtype.upper() in _WIRE_SPELLINGS:
        raise InvalidArgument(f"{where}: dtype {dtype!r} is a wire (KServe) name; configs use NumPy names: "
                              f"use {_WIRE_SPELLINGS[dtype.upper()]!r}")
    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise InvalidArgument(f"{where}: unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})") from e
    if name not in DTYPES:
        raise InvalidArgument(f"{where}: unsupported dtype {name} (use one of {', '.join(DTYPES)})")
    return name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    """Tensor name as callers and the backend use it."""
    dtype: str
    """NumPy dtype name, one of DTYPES ("float32"; a NumPy type or dtype is normalised to its name)."""
    shape: Tuple[int, ...]
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
    max_queue_delay_us: int = 1000
    """Longest time the oldest request waits for a batch to fill. 1 ms by default: batches still
    fill while the executors are busy (a batch closes when one is free), and a request that finds
    an idle model waits at most 1 ms (5 ms before: the p50 of a light model at 500 req/s was
    5.2 ms against KServe's 1.4 ms, bench/compare_servers.py)."""
    preferred_batch_sizes: Tuple[int, ...] = ()
    """Batch sizes (rows) dispatched as soon as they are reached."""
    mode: Literal["deadline_aware", "fixed_delay"] = "deadline_aware"
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

    mean: Tuple[float, ...]
    """Per feature, or one value for all."""
    std: Tuple[float, ...]
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
    mean: Tuple[float, ...]
    """Per channel, in the 0..255 pixel scale (or one value for all)."""
    std: Tuple[float, ...]
    """Per channel, in the 0..255 pixel scale; finite and non-zero."""

    def to_core(self) -> dict:
        return {"kind": "image", "height": int(self.height), "width": int(self.width),
                "mean": [float(v) for v in np.ravel(self.mean)], "std": [float(v) for v in np.ravel(self.std)]}


@dataclass(frozen=True)
class BreakerConfig:
    """When the router stops sending a version traffic (the core's CircuitBreaker): a closed
    breaker opens on either trigger, stays open ``open_us``, then lets ``half_open_probes``
    requests through; a success closes it. Meanwhile requests go to the version's fallback."""

    consecutive_failures: int = 5
    """Open after this many failures in a row; 0 turns this trigger off."""
    error_rate: float = 0.5
    """Open when failures / requests in the window exceeds this (strictly); in [0, 1), 0 turns
    this trigger off."""
    min_requests: int = 20
    """Outcomes the error-rate trigger needs in the window before it may fire (0 behaves as 1)."""
    window_us: int = 10_000_000
    """Length of the error-rate trigger's tumbling window; 0 turns that trigger off."""
    open_us: int = 5_000_000
    """How long the breaker stays open before it half-opens (0: the next request is a probe)."""
    half_open_probes: int = 1
    """Most probes outstanding at once while half-open."""

    def to_core(self) -> dict:
        """The fields of the core's ``BreakerConfig``, by the same names."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CacheConfig:
    """A per-version prediction cache (the core's PredictionCache): the outputs of recent inputs,
    bounded in bytes. Only for a version whose fingerprint is batch-invariant (checked at load)."""

    max_bytes: int = 0
    """Bytes of keys and outputs the cache may hold; 0 = no cache (the default)."""
    mode: Literal["on_hit", "last_resort"] = "on_hit"
    """"on_hit": a cached answer is returned without running the model; "last_resort": the cache
    answers only when the version and its whole fallback chain could not."""

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0


@dataclass(frozen=True)
class SloConfig:
    """The model's service level: what the load-test gate and the canary analysis hold a version to."""

    peak_rps: Optional[float] = None
    """Declared peak request rate; the gate runs at 2x it (None: 2x the stable version's observed
    peak of the last hour). Above 0 when given."""
    p99_ms: float = 200.0
    """p99 latency bound, in milliseconds (above 0)."""
    max_error_rate: float = 0.001
    """Bound on errors / requests, in [0, 1]."""
    gate_seconds: float = 5.0
    """How long the gate's load test runs, in seconds (above 0)."""


@dataclass(frozen=True)
class CanaryConfig:
    """Thresholds of the canary analysis (each step compares canary and stable over the same window)."""

    max_error_rate_increase: float = 0.01
    """Breach when the canary's error rate exceeds the stable's by more than this."""
    max_p99_ratio: float = 2.0
    """Breach when the canary's p99 is above max_p99_ratio * stable p99 + p99_slack_ms (and
    always when above slo.p99_ms)."""
    p99_slack_ms: float = 10.0
    """Milliseconds added to the ratio bound, so that two fast arms' noise is no breach."""
    min_agreement: float = 0.95
    """Breach when the share of mirrored pairs whose predictions agree is below this."""
    max_accuracy_drop: float = 0.02
    """Breach when stable accuracy - canary accuracy (from labels) is above this."""
    min_requests: int = 30
    """Canary requests a step needs before it may advance or breach on rates."""
    min_pairs: int = 20
    """Mirrored pairs needed before agreement may breach."""
    min_labels: int = 20
    """Labels per arm needed before accuracy may breach."""
    mirror_share: float = 100.0
    """Percent of canary-routed requests also run on stable (the mirrored pairs), at most what
    keeps the copies within 10% of the model's traffic (``rollout.arms.MIRROR_BUDGET``)."""
    max_copies_per_s: float = 20.0
    """Mirrored copies (and, for a shadow version, shadow copies) started per second per arm in
    each worker process, at most; beyond it the copies are sampled (0: no cap). A window's pairs are
    then bounded by time, not traffic: 20/s gives 1,200 pairs a minute per worker, 60 x min_pairs,
    enough to place an agreement near 0.95 within about +-1.2 points (each copy costs a second
    inference, a comparison and two inference-log records, ~250 us of CPU: at 50/s that was 3% of
    a worker's CPU at 12,000 req/s), while the copies' cost stays flat however fast the model is
    asked."""


@dataclass(frozen=True)
class LoggingConfig:
    """What the server's inference log keeps of this version's requests (inferline.inferlog)."""

    sample_rate: float = 0.01
    """Share of requests written to the inference log, in [0, 1] (default 1%); canary and shadow
    comparison pairs are always written."""


# Sections of ModelConfig that are routing or rollout policy: built from mappings and checked here.
_POLICY_SECTIONS = {"breaker": BreakerConfig, "cache": CacheConfig, "slo": SloConfig, "canary": CanaryConfig,
                    "logging": LoggingConfig}


Preprocess = Union[TabularPreprocess, ImagePreprocess]
@dataclass(frozen=True)
class QueueConfig:
    """Order under overload. The queue is *standing* once the oldest waiting request has waited
    longer than ``target_us`` at every dispatch for ``interval_us`` (CoDel's test); it stops
    standing as soon as the oldest has waited less. While standing (except "fifo"), requests
    that could no longer finish before their deadlines are answered DEADLINE_EXCEEDED without
    being computed."""

    overload: Literal["newest_first", "shed_oldest", "fifo"] = "newest_first"
    """"newest_first": batches take the newest requests, so arrivals meet their deadlines;
    "shed_oldest": requests waiting longer than interval_us are answered RESOURCE_EXHAUSTED;
    "fifo": oldest first always."""
    target_us: int = 0
    """Sojourn above which the queue counts as standing; 0: max_queue_delay_us + 5 ms."""
    interval_us: int = 100_000
    """How long the oldest must stay above target before the queue is standing."""

    def to_core(self) -> dict:
        return dataclasses.asdict(self)


_PREPROCESS_KINDS = {"tabular": TabularPreprocess, "image": ImagePreprocess}


@dataclass(frozen=True)
class GpuConfig:
    """How a model whose backend runs on a CUDA device (``backend.device`` "cuda" or "cuda:N")
    shares that device with other models; ignored for a model on the CPU. The device itself is
    the backend's: the engine places the model there (``to_core(gpu_device=N)``)."""

    isolation: Literal["shared", "isolated"] = "shared"
    """"shared": the model's executors launch on normal-priority CUDA streams, like every other
    model's. "isolated": its own executors use high-priority CUDA streams, so the GPU schedules
    its kernels ahead of normal-priority work of other models on the same device (isolation
    from a heavy neighbour; a kernel that is already running is not interrupted)."""


# Sections of ModelConfig built from mappings and checked here (types, Literal choices, LIMITS):
# the policy sections, and gpu (the core gets only what it implies: ModelConfig.to_core).
_CHECKED_SECTIONS = {**_POLICY_SECTIONS, "gpu": GpuConfig}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    """Model name."""
    inputs: Tuple[TensorSpec, ...]
    """TensorSpec per input, as callers send them."""
    outputs: Tuple[TensorSpec, ...]
    """TensorSpec per output, as the backend returns them."""
    version: int = 1
    """Version number of this model."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """Micro-batching policy."""
    preprocessing: Mapping[str, Preprocess] = field(default_factory=dict)
    """Input name -> TabularPreprocess or ImagePreprocess, fused into the batch gather."""
    instances: Optional[int] = None
    """Batches executed in parallel (executors). None: 1 on the CPU; 2 for a model on a GPU, where
    each executor owns a CUDA stream and device buffers, so that one copies batch N+1 to the
    device while the other's batch N computes."""
    queue_capacity: int = 4096
    """Requests that may wait per priority level before RESOURCE_EXHAUSTED."""
    priority_levels: int = 2
    """Priorities 0..levels-1; higher is served first."""
    queue: QueueConfig = field(default_factory=QueueConfig)
    """Order under overload (newest first by default)."""
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    """When the router stops sending this version traffic and uses its fallback instead."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """This version's prediction cache (off by default)."""
    slo: SloConfig = field(default_factory=SloConfig)
    """The service level the load-test gate and the canary analysis hold this version to."""
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    """Thresholds of the canary analysis when this version is a canary."""
    gpu: GpuConfig = field(default_factory=GpuConfig)
    """How the model shares its GPU with other models (used only when its backend runs on one)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """The share of this version's requests the server's inference log keeps."""

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(_as_spec(s) for s in self.inputs))
        object.__setattr__(self, "outputs", tuple(_as_spec(s) for s in self.outputs))
        for key, cls in (("batching", BatchingConfig), ("queue", QueueConfig), *_CHECKED_SECTIONS.items()):
            if isinstance(getattr(self, key), Mapping):
                object.__setattr__(self, key, _build(cls, getattr(self, key), f"{self.where}: {key}"))
        for key, cls in _CHECKED_SECTIONS.items():  # the core does not check these at load
            if not isinstance(getattr(self, key), cls):
                raise InvalidArgument(f"{self.where}: {key}: expected a {cls.__name__} or a mapping, "
                                      f"got {type(getattr(self, key)).__name__}")
            object.__setattr__(self, key, _checked(getattr(self, key), f"{self.where}: {key}"))
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

    def instances_on(self, gpu_device: Optional[int]) -> int:
        """The executors this config runs with on the CPU (gpu_device None) or on a GPU."""
        if self.instances is not None:
            return int(self.instances)
        return 1 if gpu_device is None else 2

    def placed(self, gpu_device: Optional[int]) -> "ModelConfig":
        """This config with ``instances`` resolved for where its backend runs."""
        n = self.instances_on(gpu_device)
        return self if self.instances == n else dataclasses.replace(self, instances=n)

    def to_core(self, gpu_device: Optional[int] = None) -> dict:
        """The engine's model config (breaker, cache, slo and canary are policy, left out: see
        routing/policy.py and rollout/). `gpu_device`: the CUDA device the backend runs on (a
        device backend, backends/gpu.py), None for the host; the core then gets "gpu"."""
        prep = [self.preprocessing[s.name].to_core() if s.name in self.preprocessing else None for s in self.inputs]
        core = {"name": self.name, "version": int(self.version), "inputs": [s.to_core() for s in self.inputs],
                "outputs": [s.to_core() for s in self.outputs], "preprocessing": prep,
                "batching": self.batching.to_core(), "instances": self.instances_on(gpu_device),
                "queue_capacity": int(self.queue_capacity), "priority_levels": int(self.priority_levels),
                "queue": self.queue.to_core()}
        if gpu_device is not None:
            core["gpu"] = {"device": int(gpu_device), "high_priority": self.gpu.isolation == "isolated"}
        return core


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


def _checked(obj, where: str):
    """``obj`` (a policy section: BreakerConfig, CacheConfig, SloConfig, CanaryConfig) if its
    fields have the right types and lie within LIMITS, float fields as floats; else
    InvalidArgument naming ``where``.field. An ``Optional`` field may also be None."""
    hints = typing.get_type_hints(type(obj))
    values = {}
    for f in dataclasses.fields(obj):
        key, tp, v = f"{type(obj).__name__}.{f.name}", _unoptional(hints[f.name]), getattr(obj, f.name)
        if v is None and tp is not hints[f.name]:
            values[f.name] = None
            continue
        if typing.get_origin(tp) is Literal:
            if v not in typing.get_args(tp):
                choices = ", ".join(map(repr, typing.get_args(tp)))
                raise InvalidArgument(f"{where}.{f.name}: {v!r} is not one of {choices}")
        elif isinstance(v, bool) or not isinstance(v, (int, float) if tp is float else int):
            expected = "a number" if tp is float else "an integer"
            raise InvalidArgument(f"{where}.{f.name}: expected {expected}, got {v!r}")
        elif key in LIMITS:
            lo, hi = LIMITS[key]
            above, below = key in EXCLUSIVE_MINIMUM, key in EXCLUSIVE_MAXIMUM
            if not ((lo < v if above else lo <= v) and (v < hi if below else v <= hi)):  # also NaN
                raise InvalidArgument(f"{where}.{f.name}: {v!r} is outside {'(' if above else '['}{lo}, "
                                      f"{hi}{')' if below else ']'}")
        values[f.name] = float(v) if tp is float else v
    return dataclasses.replace(obj, **values)


def _unoptional(tp):
    """T for ``Optional[T]``; any other type as it is."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Union and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp


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


# ---- the JSON Schema of a config, derived from the dataclasses and LIMITS --------

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def config_schema() -> dict:
    """The JSON Schema of a model package's config part: ModelConfig's fields except
    ``version`` (the registry assigns it), with ``name`` optional (the package names it)."""
    schema = _object_schema(ModelConfig)
    del schema["properties"]["version"]
    schema["required"] = [r for r in schema["required"] if r != "name"]
    return schema


def _object_schema(cls, kind: Optional[str] = None) -> dict:
    hints = typing.get_type_hints(cls)
    props, required = ({"kind": {"const": kind}}, ["kind"]) if kind else ({}, [])
    for f in dataclasses.fields(cls):
        props[f.name] = _type_schema(hints[f.name], f"{cls.__name__}.{f.name}")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        schema["required"] = required
    return schema


def _type_schema(tp, key: str, item: bool = False) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _unoptional(tp) is not tp:  # Optional[T]: T's schema, with null also allowed
        schema = _type_schema(_unoptional(tp), key, item)
        return {**schema, "type": [schema["type"], "null"]}
    if tp in _JSON_TYPES:
        schema = {"type": _JSON_TYPES[tp]}
        lo, hi = LIMITS.get(key, (None, None)) if tp in (int, float) else (None, None)
        if tp is str and not item:
            lo_len, hi_len = LENGTHS.get(key, (None, None))
            schema.update(_present(minLength=lo_len, maxLength=hi_len))
        bottom = "exclusiveMinimum" if key in EXCLUSIVE_MINIMUM else "minimum"
        top = "exclusiveMaximum" if key in EXCLUSIVE_MAXIMUM else "maximum"
        return {**schema, **_present(**{bottom: lo, top: hi})}
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:  # Tuple[T, ...]
        lo, hi = LENGTHS.get(key, (None, None))
        return {"type": "array", "items": _type_schema(args[0], key, item=True), **_present(minItems=lo, maxItems=hi)}
    if origin is Union:  # Preprocess: told apart by "kind"
        kinds = {c: k for k, c in _PREPROCESS_KINDS.items()}
        return {"oneOf": [_object_schema(a, kind=kinds[a]) for a in args]}
    if origin is collections.abc.Mapping:  # Mapping[str, T]
        return {"type": "object", "additionalProperties": _type_schema(args[1], key, item=True)}
    raise TypeError(f"{key}: no JSON Schema for {tp!r}")


def _present(**keywords) -> dict:
    return {k: v for k, v in keywords.items() if v is not None}
