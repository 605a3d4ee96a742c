"""One config schema: the dataclasses + LIMITS in config.py, the package JSON Schema derived from
them, and the native core's bounds (read from csrc/ text) must agree."""

import dataclasses
import json
import pathlib
import re

import pytest

from inferline import config as cfg
from inferline.backends.spec import BackendSpec
from inferline.errors import InvalidArgument
from inferline.models.package import CONFIG_KEYS, PACKAGE_SCHEMA, GoldenSpec, load_package
from inferline.server import codec

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"


def _text(rel: str) -> str:
    return (CSRC / rel).read_text(encoding="utf-8")


def _constant(header: str, name: str) -> int:
    """The value of `inline constexpr T name = <expr>;` or `static constexpr T name = <expr>;`."""
    m = re.search(rf"constexpr\s+\w+\s+{name}\s*=\s*([^;]+);", _text(header))
    assert m, f"{name} not found in {header}"
    expr = re.sub(r"(?<=\d)[uUlL]+\b", "", m.group(1)).replace("'", "")
    assert re.fullmatch(r"[\d\s<()+*-]+", expr), f"{name} = {expr!r}: not a plain integer expression"
    return int(eval(expr))  # digits and operators only (checked above)


def _range_check(source: str, member: str) -> tuple:
    """(lo, hi) from the core's `c.<member> < LO || c.<member> > HI` check."""
    m = re.search(rf"c\.{member}\s*<\s*(\w+)\s*\|\|\s*c\.{member}\s*>\s*(\w+)", _text(source))
    assert m, f"no range check for {member} in {source}"
    return tuple(int(v) if v.isdigit() else _constant("include/inferline/model.h", v) for v in m.groups())


U32, U64 = (1 << 32) - 1, (1 << 64) - 1
MAX_SIDE = _constant("include/inferline/preprocess.h", "kMaxImageSide")
CORE_LIMITS = {
    "ModelConfig.instances": _range_check("src/model.cpp", "instances"),
    "ModelConfig.queue_capacity": _range_check("src/model.cpp", "queue_capacity"),
    "ModelConfig.priority_levels": _range_check("src/model.cpp", "priority_levels"),
    "BatchingConfig.max_batch_size": (1, U32),        # "== 0" refused in batch_policy.cpp; uint32_t
    "BatchingConfig.max_queue_delay_us": (0, U64),
    "BatchingConfig.preferred_batch_sizes": (1, U32),
    "BatchingConfig.deadline_slack_us": (0, U64),
    "QueueConfig.target_us": (0, U64),
    "QueueConfig.interval_us": (1, U64),              # "interval_us == 0" refused in model.cpp
    "ImagePreprocess.height": (1, MAX_SIDE),
    "ImagePreprocess.width": (1, MAX_SIDE),
}
# Routing policy (the core's Router gets it, not its model load): bounds of the routing issue,
# within BreakerConfig::Validate's (error_rate in [0, 1), half_open_probes >= 1) and its field widths.
I64 = (1 << 63) - 1
POLICY_LIMITS = {
    "BreakerConfig.consecutive_failures": (0, 1_000_000),
    "BreakerConfig.error_rate": (0.0, 1.0),  # maximum excluded
    "BreakerConfig.min_requests": (0, 1_000_000_000),
    "BreakerConfig.window_us": (0, I64),
    "BreakerConfig.open_us": (0, I64),
    "BreakerConfig.half_open_probes": (1, 1_000_000),
    "CacheConfig.max_bytes": (0, 1 << 40),
}
# Rollout policy (Python only, rollout/): the gate's SLO and the canary analysis's thresholds.
ROLLOUT_LIMITS = {
    "SloConfig.peak_rps": (0.0, 1e7),                  # minimum excluded; None allowed
    "SloConfig.p99_ms": (0.0, 3_600_000.0),             # minimum excluded
    "SloConfig.max_error_rate": (0.0, 1.0),
    "SloConfig.gate_seconds": (0.0, 3600.0),            # minimum excluded
    "CanaryConfig.max_error_rate_increase": (0.0, 1.0),
    "CanaryConfig.max_p99_ratio": (1.0, 1000.0),
    "CanaryConfig.p99_slack_ms": (0.0, 3_600_000.0),
    "CanaryConfig.min_agreement": (0.0, 1.0),
    "CanaryConfig.max_accuracy_drop": (0.0, 1.0),
    "CanaryConfig.min_requests": (1, 1_000_000_000),
    "CanaryConfig.min_pairs": (1, 1_000_000_000),
    "CanaryConfig.min_labels": (1, 1_000_000_000),
    "CanaryConfig.mirror_share": (0.0, 100.0),
    "CanaryConfig.max_copies_per_s": (0.0, 1e6),
    "LoggingConfig.sample_rate": (0.0, 1.0),
}
# The C++ field each bound applies to, and the width it must fit.
CORE_FIELDS = {
    "ModelConfig.instances": ("include/inferline/model.h", "uint32_t instances"),
    "ModelConfig.queue_capacity": ("include/inferline/model.h", "uint32_t queue_capacity"),
    "ModelConfig.priority_levels": ("include/inferline/model.h", "uint32_t priority_levels"),
    "BatchingConfig.max_batch_size": ("include/inferline/batch_policy.h", "uint32_t max_batch_size"),
    "BatchingConfig.max_queue_delay_us": ("include/inferline/batch_policy.h", "uint64_t max_queue_delay_us"),
    "BatchingConfig.preferred_batch_sizes": ("include/inferline/batch_policy.h",
                                             "std::vector<uint32_t> preferred_batch_sizes"),
    "BatchingConfig.deadline_slack_us": ("include/inferline/batch_policy.h", "uint64_t deadline_slack_us"),
    "QueueConfig.target_us": ("include/inferline/model.h", "uint64_t target_us"),
    "QueueConfig.interval_us": ("include/inferline/model.h", "uint64_t interval_us"),
    "BreakerConfig.consecutive_failures": ("include/inferline/circuit_breaker.h", "uint32_t consecutive_failures"),
    "BreakerConfig.error_rate": ("include/inferline/circuit_breaker.h", "double error_rate"),
    "BreakerConfig.min_requests": ("include/inferline/circuit_breaker.h", "uint32_t min_requests"),
    "BreakerConfig.window_us": ("include/inferline/circuit_breaker.h", "uint64_t window_us"),
    "BreakerConfig.open_us": ("include/inferline/circuit_breaker.h", "uint64_t open_us"),
    "BreakerConfig.half_open_probes": ("include/inferline/circuit_breaker.h", "uint32_t half_open_probes"),
}
WIDTHS = {"uint32_t": U32, "uint64_t": U64, "double": 1.0}


def _core_default(header: str, decl: str):
    """The default of `decl = <value>;` in a core header, as a number."""
    m = re.search(re.escape(decl).replace(r"\ ", r"\s+") + r"\s*=\s*([\d.']+)\s*;", _text(header))
    assert m, f"{decl} has no default in {header}"
    value = m.group(1).replace("'", "")
    return float(value) if "." in value else int(value)


def test_core_bounds_match_limits():
    assert cfg.LIMITS == {**CORE_LIMITS, **POLICY_LIMITS, **ROLLOUT_LIMITS}
    assert cfg.EXCLUSIVE_MAXIMUM == {"BreakerConfig.error_rate"}
    assert cfg.EXCLUSIVE_MINIMUM == {"SloConfig.peak_rps", "SloConfig.p99_ms", "SloConfig.gate_seconds"}
    assert _constant("include/inferline/model.h", "kMaxQueueCapacity") == cfg.LIMITS["ModelConfig.queue_capacity"][1]
    assert "batching.max_batch_size must be >= 1" in _text("src/batch_policy.cpp")
    assert cfg.LENGTHS["TensorSpec.shape"] == (1, _constant("include/inferline/tensor.h", "kMaxRank"))


@pytest.mark.parametrize("key", sorted(CORE_FIELDS))
def test_core_field_widths(key):
    header, decl = CORE_FIELDS[key]
    assert re.search(re.escape(decl).replace(r"\ ", r"\s+") + r"\s*[=;]", _text(header)), f"{decl} in {header}"


def test_policy_bounds_fit_the_core_breaker():
    for key, (lo, hi) in POLICY_LIMITS.items():
        if key in CORE_FIELDS:
            assert 0 <= lo and hi <= WIDTHS[CORE_FIELDS[key][1].split()[0]], key
    source = _text("src/circuit_breaker.cpp")
    assert re.search(r"error_rate\s*>=\s*0\.0\s*&&\s*error_rate\s*<\s*1\.0", source)
    assert re.search(r"half_open_probes\s*==\s*0", source)


def test_queue_defaults_are_the_cores():
    defaults = cfg.QueueConfig()
    for key in ("QueueConfig.target_us", "QueueConfig.interval_us"):
        assert getattr(defaults, key.split(".")[1]) == _core_default(*CORE_FIELDS[key]), key
    assert "queue.interval_us must be > 0" in _text("src/model.cpp")
    assert "OverloadOrder overload = OverloadOrder::kNewestFirst;" in _text("include/inferline/model.h")
    assert defaults.overload == "newest_first"


def test_breaker_defaults_are_the_cores():
    defaults = cfg.BreakerConfig()
    for key, (header, decl) in CORE_FIELDS.items():
        if key.startswith("BreakerConfig."):
            assert getattr(defaults, key.split(".")[1]) == _core_default(header, decl), key
    assert defaults.to_core() == dataclasses.asdict(defaults)
    assert cfg.CacheConfig() == cfg.CacheConfig(max_bytes=0, mode="on_hit") and not cfg.CacheConfig().enabled


def _schema_at(path: str) -> dict:
    """PACKAGE_SCHEMA's node for "ModelConfig.instances", "BatchingConfig.mode", "ImagePreprocess.height"..."""
    cls, name = path.split(".")
    props = PACKAGE_SCHEMA["properties"]
    section = {"BatchingConfig": "batching", "BreakerConfig": "breaker", "CacheConfig": "cache",
               "SloConfig": "slo", "CanaryConfig": "canary", "QueueConfig": "queue", "LoggingConfig": "logging"}.get(cls)
    if section:
        return props[section]["properties"][name]
    if cls == "TensorSpec":
        return props["inputs"]["items"]["properties"][name]
    if cls in ("TabularPreprocess", "ImagePreprocess"):
        kinds = props["preprocessing"]["additionalProperties"]["oneOf"]
        kind = {"TabularPreprocess": "tabular", "ImagePreprocess": "image"}[cls]
        return next(k for k in kinds if k["properties"]["kind"] == {"const": kind})["properties"][name]
    return props[name]


@pytest.mark.parametrize("key", sorted(cfg.LIMITS))
def test_schema_carries_the_bounds(key):
    node = _schema_at(key)
    node = node.get("items", node)
    bottom = "exclusiveMinimum" if key in cfg.EXCLUSIVE_MINIMUM else "minimum"
    top = "exclusiveMaximum" if key in cfg.EXCLUSIVE_MAXIMUM else "maximum"
    assert (node[bottom], node[top]) == cfg.LIMITS[key]
    assert set(node) & {"minimum", "exclusiveMinimum"} == {bottom}
    assert set(node) & {"maximum", "exclusiveMaximum"} == {top}


def test_dataclass_fields_match_schema_properties():
    props = PACKAGE_SCHEMA["properties"]
    assert set(CONFIG_KEYS) == {f.name for f in dataclasses.fields(cfg.ModelConfig)} - {"name", "version"}
    assert set(props) - set(CONFIG_KEYS) == {"name", "backend", "fallback", "golden", "labels"}

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert set(props["batching"]["properties"]) == names(cfg.BatchingConfig)
    assert set(props["breaker"]["properties"]) == names(cfg.BreakerConfig)
    assert set(props["cache"]["properties"]) == names(cfg.CacheConfig)
    assert props["cache"]["properties"]["mode"] == {"enum": ["on_hit", "last_resort"]}
    assert set(props["slo"]["properties"]) == names(cfg.SloConfig)
    assert set(props["canary"]["properties"]) == names(cfg.CanaryConfig)
    assert props["slo"]["properties"]["peak_rps"]["type"] == ["number", "null"]  # Optional[float]
    assert set(props["inputs"]["items"]["properties"]) == names(cfg.TensorSpec)
    assert set(props["outputs"]["items"]["properties"]) == names(cfg.TensorSpec)
    tabular, image = props["preprocessing"]["additionalProperties"]["oneOf"]
    assert set(tabular["properties"]) == names(cfg.TabularPreprocess) | {"kind"}
    assert set(image["properties"]) == names(cfg.ImagePreprocess) | {"kind"}
    # The package's own parts, hand-written in package.py, against their dataclasses.
    assert set(props["backend"]["properties"]) == names(BackendSpec)
    assert set(props["golden"]["properties"]) == names(GoldenSpec)
    # Required = fields without a default.
    assert PACKAGE_SCHEMA["required"] == ["inputs", "outputs"]
    assert tabular["required"] == ["kind", "mean", "std"]
    assert image["required"] == ["kind", "height", "width", "mean", "std"]
    assert all("required" not in props[k] for k in ("batching", "breaker", "cache", "slo", "canary"))


def test_every_limit_names_a_field():
    for key in list(cfg.LIMITS) + list(cfg.LENGTHS):
        cls, name = key.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(cfg, cls))}, key


def test_one_dtype_vocabulary_each_side():
    assert set(codec.NUMPY_TO_KSERVE) == set(cfg.DTYPES)
    assert set(codec.KSERVE_TO_NUMPY) == set(codec.NUMPY_TO_KSERVE.values())


@pytest.mark.parametrize("wire, numpy_name", [("FP32", "float32"), ("fp16", "float16"), ("INT64", "int64"),
                                               ("UINT8", "uint8"), ("BOOL", "bool")])
def test_wire_dtype_names_are_refused_with_the_numpy_name(wire, numpy_name):
    with pytest.raises(InvalidArgument, match=rf"tensor 'x': dtype '{wire}' is a wire \(KServe\) name; "
                                              rf".*use '{numpy_name}'"):
        cfg.TensorSpec("x", wire, (-1, 4))


def test_numpy_names_and_types_are_accepted():
    import numpy as np
    assert [cfg.TensorSpec("x", d, (-1,)).dtype for d in ("float32", np.int64, np.dtype("uint8"), "bool")] == \
        ["float32", "int64", "uint8", "bool"]
    with pytest.raises(InvalidArgument, match="unsupported dtype complex64 .*use one of bool"):
        cfg.TensorSpec("x", "complex64", (-1,))


def _package(tmp_path, **extra):
    doc = {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 4]}], **extra}
    (tmp_path / "model.json").write_text(json.dumps(doc))
    (tmp_path / "model.onnx").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("extra, message", [
    ({"queue_capacity": (1 << 22) + 1}, "field queue_capacity: 4194305 is greater than the maximum of 4194304"),
    ({"instances": 65}, "field instances: 65 is greater than the maximum of 64"),
    ({"batching": {"max_batch_size": 0}}, "field batching.max_batch_size: 0 is less than the minimum of 1"),
    ({"batching": {"max_batch_size": 1 << 32}}, "field batching.max_batch_size: 4294967296 is greater than"),
    ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-1] + [2] * 8}]}, "field inputs.0.shape: .* too long"),
    ({"breaker": {"error_rate": 1}}, "field breaker.error_rate: 1 is greater than or equal to the maximum of 1"),
    ({"breaker": {"half_open_probes": 0}}, "field breaker.half_open_probes: 0 is less than the minimum of 1"),
    ({"breaker": {"consecutive_failures": -1}}, "field breaker.consecutive_failures: -1 is less than the minimum"),
    ({"breaker": {"window": 5}}, "field breaker: Additional properties are not allowed"),
    ({"cache": {"max_bytes": (1 << 40) + 1}}, "field cache.max_bytes: 1099511627777 is greater than the maximum"),
    ({"cache": {"max_bytes": 1024, "mode": "always"}}, "field cache.mode: 'always' is not one of"),
    ({"slo": {"peak_rps": 0}}, "field slo.peak_rps: 0 is less than or equal to the minimum of 0"),
    ({"slo": {"p99_ms": -5}}, "field slo.p99_ms: -5 is less than or equal to the minimum of 0"),
    ({"slo": {"max_error_rate": 1.5}}, "field slo.max_error_rate: 1.5 is greater than the maximum of 1"),
    ({"slo": {"gate_seconds": "5"}}, "field slo.gate_seconds: '5' is not of type 'number'"),
    ({"slo": {"p99": 100}}, "field slo: Additional properties are not allowed"),
    ({"canary": {"mirror_share": 101}}, "field canary.mirror_share: 101 is greater than the maximum of 100"),
    ({"canary": {"min_agreement": -0.1}}, "field canary.min_agreement: -0.1 is less than the minimum of 0"),
    ({"canary": {"min_requests": 0}}, "field canary.min_requests: 0 is less than the minimum of 1"),
    ({"canary": {"min_pairs": 2.5}}, "field canary.min_pairs: 2.5 is not of type 'integer'"),
    ({"canary": {"max_p99_ratio": 0.5}}, "field canary.max_p99_ratio: 0.5 is less than the minimum of 1"),
])
def test_package_schema_refuses_what_the_core_would(tmp_path, extra, message):
    with pytest.raises(InvalidArgument, match=message):
        load_package(str(_package(tmp_path, **extra)))


def test_package_at_the_core_bound_passes_the_schema(tmp_path):
    pkg = load_package(str(_package(tmp_path, queue_capacity=1 << 22, instances=64, priority_levels=16)))
    assert (pkg.config.queue_capacity, pkg.config.instances, pkg.config.priority_levels) == (1 << 22, 64, 16)


def test_package_with_a_wire_dtype_says_which_name_to_use(tmp_path):
    pkg = _package(tmp_path, inputs=[{"name": "x", "dtype": "FP32", "shape": [-1, 4]}])
    with pytest.raises(InvalidArgument, match="dtype 'FP32' is a wire \\(KServe\\) name; .*use 'float32'"):
        load_package(str(pkg))


def test_breaker_and_cache_default_to_the_core_defaults_and_cache_off(tmp_path):
    config = load_package(str(_package(tmp_path))).config
    assert config.breaker == cfg.BreakerConfig() and config.cache == cfg.CacheConfig()
    assert "breaker" not in config.to_core() and "cache" not in config.to_core()  # routing policy
    assert config.slo == cfg.SloConfig() and config.canary == cfg.CanaryConfig()
    assert "slo" not in config.to_core() and "canary" not in config.to_core()  # rollout policy


def test_breaker_and_cache_from_a_package(tmp_path):
    config = load_package(str(_package(tmp_path, breaker={"consecutive_failures": 0, "error_rate": 0.25},
                                       cache={"max_bytes": 1 << 20, "mode": "last_resort"}))).config
    assert (config.breaker.consecutive_failures, config.breaker.error_rate, config.breaker.min_requests) == (0, 0.25, 20)
    assert config.cache == cfg.CacheConfig(max_bytes=1 << 20, mode="last_resort") and config.cache.enabled


@pytest.mark.parametrize("field, value, message", [
    ("breaker", {"error_rate": 1.0}, r"breaker.error_rate: 1.0 is outside \[0.0, 1.0\)"),
    ("breaker", {"error_rate": float("nan")}, r"breaker.error_rate: nan is outside"),
    ("breaker", {"half_open_probes": 0}, r"breaker.half_open_probes: 0 is outside \[1, 1000000\]"),
    ("breaker", {"open_us": True}, r"breaker.open_us: expected an integer, got True"),
    ("breaker", {"min_requests": 2.5}, r"breaker.min_requests: expected an integer"),
    ("breaker", {"probes": 1}, r"breaker: unknown field\(s\) probes"),
    ("cache", {"max_bytes": -1}, r"cache.max_bytes: -1 is outside \[0, 1099511627776\]"),
    ("cache", {"mode": "always"}, r"cache.mode: 'always' is not one of 'on_hit', 'last_resort'"),
    ("slo", {"peak_rps": 0.0}, r"slo.peak_rps: 0.0 is outside \(0.0, 10000000.0\]"),
    ("slo", {"peak_rps": float("nan")}, r"slo.peak_rps: nan is outside"),
    ("slo", {"p99_ms": 0}, r"slo.p99_ms: 0 is outside \(0.0, 3600000.0\]"),
    ("slo", {"max_error_rate": 2}, r"slo.max_error_rate: 2 is outside \[0.0, 1.0\]"),
    ("slo", {"gate_seconds": "5"}, r"slo.gate_seconds: expected a number, got '5'"),
    ("slo", {"peak": 5}, r"slo: unknown field\(s\) peak"),
    ("slo", 5, r"slo: expected a SloConfig or a mapping, got int"),
    ("canary", {"mirror_share": 100.5}, r"canary.mirror_share: 100.5 is outside \[0.0, 100.0\]"),
    ("canary", {"max_p99_ratio": 0.9}, r"canary.max_p99_ratio: 0.9 is outside \[1.0, 1000.0\]"),
    ("canary", {"min_labels": 0}, r"canary.min_labels: 0 is outside \[1, 1000000000\]"),
    ("canary", {"min_pairs": 20.0}, r"canary.min_pairs: expected an integer, got 20.0"),
    ("canary", {"min_agreement": True}, r"canary.min_agreement: expected a number, got True"),
])
def test_breaker_and_cache_are_checked_in_python(field, value, message):
    """The core never loads them, so a config built in Python is checked here, naming the model."""
    with pytest.raises(InvalidArgument, match=r"^model 'm' version 3: " + message):
        cfg.ModelConfig("m", [("x", "float32", (-1, 4))], [("y", "float32", (-1, 4))], version=3, **{field: value})
    assert cfg.ModelConfig("m", [("x", "float32", (-1, 4))], [("y", "float32", (-1, 4))],
                           breaker={"error_rate": 0}).breaker.error_rate == 0.0  # an int is a number


def test_slo_and_canary_from_a_package(tmp_path):
    config = load_package(str(_package(tmp_path, slo={"peak_rps": 250, "p99_ms": 50, "gate_seconds": 2},
                                       canary={"min_requests": 100, "mirror_share": 10}))).config
    assert config.slo == cfg.SloConfig(peak_rps=250.0, p99_ms=50.0, max_error_rate=0.001, gate_seconds=2.0)
    assert isinstance(config.slo.peak_rps, float) and isinstance(config.slo.p99_ms, float)  # ints become floats
    assert (config.canary.min_requests, config.canary.mirror_share, config.canary.min_pairs) == (100, 10.0, 20)
    unset = load_package(str(_package(tmp_path, slo={"peak_rps": None}))).config
    assert unset.slo.peak_rps is None  # null: the gate uses the observed peak


def test_slo_and_canary_in_python():
    def make(**kw):
        return cfg.ModelConfig("m", [("x", "float32", (-1, 4))], [("y", "float32", (-1, 4))], **kw)

    assert make().slo.peak_rps is None and make(slo={"peak_rps": None}).slo.peak_rps is None
    assert make(slo=cfg.SloConfig(peak_rps=3)).slo.peak_rps == 3.0  # a dataclass is checked too
    assert make(canary={"max_p99_ratio": 1, "mirror_share": 0}).canary.mirror_share == 0.0
