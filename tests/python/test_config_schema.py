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
    "ImagePreprocess.height": (1, MAX_SIDE),
    "ImagePreprocess.width": (1, MAX_SIDE),
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
}


def test_core_bounds_match_limits():
    assert cfg.LIMITS == CORE_LIMITS
    assert _constant("include/inferline/model.h", "kMaxQueueCapacity") == cfg.LIMITS["ModelConfig.queue_capacity"][1]
    assert "batching.max_batch_size must be >= 1" in _text("src/batch_policy.cpp")
    assert cfg.LENGTHS["TensorSpec.shape"] == (1, _constant("include/inferline/tensor.h", "kMaxRank"))


@pytest.mark.parametrize("key", sorted(CORE_FIELDS))
def test_core_field_widths(key):
    header, decl = CORE_FIELDS[key]
    assert re.search(re.escape(decl).replace(r"\ ", r"\s+") + r"\s*[=;]", _text(header)), f"{decl} in {header}"


def _schema_at(path: str) -> dict:
    """PACKAGE_SCHEMA's node for "ModelConfig.instances", "BatchingConfig.mode", "ImagePreprocess.height"..."""
    cls, name = path.split(".")
    props = PACKAGE_SCHEMA["properties"]
    if cls == "BatchingConfig":
        return props["batching"]["properties"][name]
    if cls == "TensorSpec":
        return props["inputs"]["items"]["properties"][name]
    if cls in ("TabularPreprocess", "ImagePreprocess"):
        kinds = props["preprocessing"]["additionalProperties"]["oneOf"]
        kind = {"TabularPreprocess": "tabular", "ImagePreprocess": "image"}[cls]
        return next(k for k in kinds if k["properties"]["kind"] == {"const": kind})["properties"][name]
    return props[name]


@pytest.mark.parametrize("key", sorted(CORE_LIMITS))
def test_schema_carries_the_core_bounds(key):
    node = _schema_at(key)
    node = node.get("items", node)
    assert (node["minimum"], node["maximum"]) == CORE_LIMITS[key]


def test_dataclass_fields_match_schema_properties():
    props = PACKAGE_SCHEMA["properties"]
    assert set(CONFIG_KEYS) == {f.name for f in dataclasses.fields(cfg.ModelConfig)} - {"name", "version"}
    assert set(props) - set(CONFIG_KEYS) == {"name", "backend", "fallback", "golden", "labels"}

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert set(props["batching"]["properties"]) == names(cfg.BatchingConfig)
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
    assert "required" not in props["batching"]


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
