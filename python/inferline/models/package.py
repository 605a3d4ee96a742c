"""Model packages: a directory with the artifact and a config file, or a bare .onnx file.

    my-model/
      model.onnx | model.pt     the artifact (ONNX, or TorchScript for backend torchscript)
      model.yaml | model.json   the config, validated against PACKAGE_SCHEMA
      golden.npz                optional golden inputs/outputs ("inputs/<name>", "outputs/<name>")

The config holds the model's signature, backend and its settings, batching,
preprocessing, breaker and cache settings, the SLO and canary thresholds (rollout),
fallback reference (name[:version]), golden settings and labels.
A bare ``.onnx`` file is a package too: its signature is read from the graph
(dim 0 -> -1) and defaults fill the rest. The version is not part of the
package: the registry assigns it at push.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..backends.spec import BackendSpec
from ..config import ModelConfig, config_schema
from ..errors import InvalidArgument
from ..registry import check_fallback_ref, check_name

CONFIG_NAMES = ("model.yaml", "model.yml", "model.json")
ARTIFACT_BY_BACKEND = {"onnxruntime": "model.onnx", "torchscript": "model.pt"}

def _package_schema() -> dict:
    """The config part comes from config.py (dataclasses + LIMITS); the rest is the package's own."""
    config = config_schema()
    props = dict(config["properties"])
    own = {
        "backend": {"type": "object", "additionalProperties": False, "properties": {
            "name": {"enum": ["onnxruntime", "torchscript"]}, "threads": {"type": ["integer", "null"], "minimum": 1},
            "inter_op_threads": {"type": ["integer", "null"], "minimum": 1},
            "providers": {"type": "array", "items": {"type": "string"}}, "device": {"type": "string"},
            "graph_optimization": {"enum": ["disable", "basic", "extended", "all"]},
            "options": {"type": "object"}}},
        "fallback": {"type": ["string", "null"]},
        "golden": {"type": "object", "additionalProperties": False, "required": ["file"], "properties": {
            "file": {"type": "string"}, "bitwise": {"type": "boolean"},
            "rtol": {"type": "number", "minimum": 0}, "atol": {"type": "number", "minimum": 0}}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    }
    ordered = {k: props.pop(k) for k in ("name", "inputs", "outputs")}
    return {"type": "object", "additionalProperties": False, "required": config["required"],
            "properties": {**ordered, "backend": own.pop("backend"), **props, **own}}


PACKAGE_SCHEMA = _package_schema()
# Config keys handed to ModelConfig (the rest of PACKAGE_SCHEMA is the package's own).
CONFIG_KEYS = tuple(k for k in config_schema()["properties"] if k != "name")


@dataclass(frozen=True)
class GoldenSpec:
    file: str
    """Name of the .npz inside the package."""
    bitwise: bool = False
    """Outputs must match bit for bit (else within rtol/atol)."""
    rtol: float = 1e-5
    atol: float = 1e-6


@dataclass(frozen=True)
class ModelPackage:
    name: str
    config: ModelConfig
    """The config with version 1; the registry's version replaces it at load."""
    backend: BackendSpec
    artifact: str
    """Relative name of the artifact inside the package."""
    files: dict
    """Relative name -> local path of every file that belongs to the package."""
    data: dict
    """The validated config as plain data (stored with the version)."""
    fallback: Optional[str] = None
    golden: Optional[GoldenSpec] = None
    labels: dict = field(default_factory=dict)
    scratch: Optional[str] = None
    """A temporary directory holding generated files (bare .onnx), removed by ``discard_scratch``."""

    def discard_scratch(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def artifact_path(self) -> str:
        return self.files[self.artifact]

    def golden_arrays(self, root: Optional[str] = None):
        """(inputs, outputs) dicts from the golden .npz, or None."""
        if self.golden is None:
            return None
        path = os.path.join(root, self.golden.file) if root else self.files[self.golden.file]
        return read_golden(path, self.config, where=f"model {self.name!r}: golden.file")


def load_package(path: str, name: Optional[str] = None) -> ModelPackage:
    """Reads and validates a package directory or a bare .onnx file."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise InvalidArgument(f"package path {path!r} does not exist")
    if os.path.isfile(path):
        if not path.endswith(".onnx"):
            raise InvalidArgument(f"package path {path!r}: a file must be a bare .onnx model; otherwise give a "
                                  f"directory with {' or '.join(CONFIG_NAMES)}")
        return _bare_onnx(path, name)
    return _directory(path, name)


def _bare_onnx(path: str, name: Optional[str]) -> ModelPackage:
    from ..backends.onnxruntime import signature_from_onnx

    name = check_name(name or os.path.splitext(os.path.basename(path))[0], "--name")
    inputs, outputs = signature_from_onnx(path)
    data = {"name": name, "inputs": [s.to_core() for s in inputs], "outputs": [s.to_core() for s in outputs],
            "backend": {"name": "onnxruntime"}}
    # The stored package is a normal one: the derived config travels with the artifact.
    scratch = tempfile.mkdtemp(prefix="inferline-bare-")
    config_path = os.path.join(scratch, "model.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    return _build(data, name, {"model.onnx": path, "model.json": config_path}, "model.onnx", scratch)


def _directory(root: str, name: Optional[str]) -> ModelPackage:
    found = [n for n in CONFIG_NAMES if os.path.isfile(os.path.join(root, n))]
    if not found:
        raise InvalidArgument(f"package {root!r}: no config file ({', '.join(CONFIG_NAMES)})")
    data = _read_config(os.path.join(root, found[0]))
    backend_name = data.get("backend", {}).get("name", "onnxruntime")
    artifact = ARTIFACT_BY_BACKEND[backend_name]
    files = {found[0]: os.path.join(root, found[0])}
    for rel in [artifact] + ([data["golden"]["file"]] if "golden" in data else []):
        if os.path.basename(rel) != rel or rel in ("", ".", ".."):
            raise InvalidArgument(f"package {root!r}: golden.file {rel!r} must be a plain file name in the package")
        full = os.path.join(root, rel)
        if not os.path.isfile(full):
            what = "artifact" if rel == artifact else "golden.file"
            raise InvalidArgument(f"package {root!r}: {what} {rel!r} is missing (backend {backend_name} needs "
                                  f"{artifact})")
        files[rel] = full
    pkg_name = check_name(name or data.get("name") or os.path.basename(root.rstrip(os.sep)),
                          "--name" if name else "name")
    return _build(data, pkg_name, files, artifact)


def _read_config(path: str) -> dict:
    import jsonschema

    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".json"):
                data = json.load(f)
            else:
                import yaml
                data = yaml.safe_load(f)
    except Exception as e:  # a parse error of any kind: report where
        raise InvalidArgument(f"{path}: cannot parse: {e}") from e
    try:
        jsonschema.validate(data, PACKAGE_SCHEMA)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InvalidArgument(f"{path}: field {where}: {e.message}") from None
    return data


def _build(data: dict, name: str, files: dict, artifact: str, scratch: Optional[str] = None) -> ModelPackage:
    where = f"model {name!r}"
    config = ModelConfig.from_dict({"name": name, **{k: data[k] for k in CONFIG_KEYS if k in data}})
    backend = BackendSpec(**data.get("backend", {}))
    fallback = data.get("fallback")
    if fallback is not None:  # the registry's one rule; it checks existence when the package is pushed
        check_fallback_ref(name, None, fallback, f"{where}: fallback")
    golden = GoldenSpec(**data["golden"]) if "golden" in data else None
    pkg = ModelPackage(name=name, config=config, backend=backend, artifact=artifact, files=dict(files),
                       data={**data, "name": name}, fallback=fallback, golden=golden,
                       labels=dict(data.get("labels", {})), scratch=scratch)
    if golden is not None:
        pkg.golden_arrays()  # validates the file now
    return pkg


def read_golden(path: str, config: ModelConfig, where: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise InvalidArgument(f"{where}: cannot read {os.path.basename(path)}: {e}") from e
    inputs = {n: arrays.get(f"inputs/{n}") for n in config.input_names}
    outputs = {n: arrays.get(f"outputs/{n}") for n in config.output_names}
    missing = [f"inputs/{k}" for k, v in inputs.items() if v is None] + \
              [f"outputs/{k}" for k, v in outputs.items() if v is None]
    if missing:
        raise InvalidArgument(f"{where}: {os.path.basename(path)} lacks {', '.join(missing)}")
    return inputs, outputs


def write_golden(path: str, inputs: dict, outputs: dict) -> None:
    np.savez(path, **{f"inputs/{k}": v for k, v in inputs.items()}, **{f"outputs/{k}": v for k, v in outputs.items()})
