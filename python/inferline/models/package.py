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

An ONNX graph's external data files (``location`` relative to the graph, e.g. weights.bin for
a model over 2 GB) belong to the package and are stored with it. Nothing outside the package
is read: every file must be a regular file inside its directory, reached without symbolic
links. The config is at most MAX_CONFIG_BYTES, YAML aliases are refused (a few nested ones
expand a small file to gigabytes) and backend options are scalars.
"""

from __future__ import annotations

import functools
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
MAX_CONFIG_BYTES = 1 << 20
"""A config file's size limit (the demo configs are about 5 KB)."""
_MAX_MESSAGE = 300
_SCALAR = ["string", "integer", "number", "boolean"]

def _package_schema() -> dict:
    """The config part comes from config.py (dataclasses + LIMITS); the rest is the package's own."""
    config = config_schema()
    props = dict(config["properties"])
    own = {
        "backend": {"type": "object", "additionalProperties": False, "properties": {
            "name": {"enum": ["onnxruntime", "torchscript"]}, "threads": {"type": ["integer", "null"], "minimum": 1},
            "inter_op_threads": {"type": ["integer", "null"], "minimum": 1},
            "providers": {"type": "array", "items": {"type": "string"}}, "device": {"type": "string"},
            "cuda_graphs": {"enum": ["off", "buckets", "fixed", None]},
            "graph_optimization": {"enum": ["disable", "basic", "extended", "all"]},
            "native": {"type": ["boolean", "null"]},
            "options": {"type": "object", "additionalProperties": {"type": _SCALAR}}}},
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
    try:
        external = _external_data(os.path.dirname(path), path, os.path.basename(path))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    files = {**external, "model.onnx": path, "model.json": config_path}
    return _build(data, name, files, "model.onnx", scratch)


def _directory(root: str, name: Optional[str]) -> ModelPackage:
    root = os.path.realpath(root)  # the package may be named through a link; nothing inside may be one
    found = [n for n in CONFIG_NAMES if os.path.lexists(os.path.join(root, n))]
    if not found:
        raise InvalidArgument(f"package {root!r}: no config file ({', '.join(CONFIG_NAMES)})")
    data = _read_config(_package_file(root, found[0], "config"))
    backend_name = data.get("backend", {}).get("name", "onnxruntime")
    artifact = ARTIFACT_BY_BACKEND[backend_name]
    files = {found[0]: os.path.join(root, found[0])}
    for rel in [artifact] + ([data["golden"]["file"]] if "golden" in data else []):
        what = "artifact" if rel == artifact else "golden.file"
        if os.path.basename(rel) != rel or rel in ("", ".", ".."):
            raise InvalidArgument(f"package {root!r}: golden.file {rel!r} must be a plain file name in the package")
        files[rel] = _package_file(root, rel, what, f"backend {backend_name} needs {artifact}")
    if backend_name == "onnxruntime":
        files.update(_external_data(root, files[artifact], artifact))
    pkg_name = check_name(name or data.get("name") or os.path.basename(root.rstrip(os.sep)),
                          "--name" if name else "name")
    return _build(data, pkg_name, files, artifact)


def _package_file(root: str, rel: str, what: str, needs: str = "") -> str:
    """The path of ``rel`` ('/'-separated) in the package directory ``root`` (resolved): a regular
    file reached without symbolic links, so that nothing outside the package is read or shown."""
    path = root
    for part in rel.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            link = os.path.relpath(path, root).replace(os.sep, "/")
            how = "is a symbolic link" if link == rel else f"is under a symbolic link ({link!r})"
            raise InvalidArgument(f"package {root!r}: {what} {rel!r} {how}; a package's files must be regular "
                                  f"files inside its directory (copy the file in)")
    if not os.path.isfile(path):
        raise InvalidArgument(f"package {root!r}: {what} {rel!r} is missing" + (f" ({needs})" if needs else ""))
    return path


def _external_data(root: str, graph: str, artifact: str) -> dict:
    """{relative name: path} of the external data files that the ONNX graph at ``graph`` (the package's
    ``artifact``) references, each a plain relative path to a regular file inside ``root``."""
    from ..backends.onnxruntime import external_data_locations

    files = {}
    for tensor, location in external_data_locations(graph):
        where = f"package {root!r}: {artifact}: {tensor}: external data"
        if not location:
            raise InvalidArgument(f"{where} names no location")
        parts = location.split("/")
        if "\\" in location or os.path.isabs(location) or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(f"{where} {location[:200]!r} must be a relative path inside the package "
                                  f"('/'-separated, without '..', '.', empty parts or a leading '/')")
        if location not in files:
            files[location] = _package_file(root, location, f"{artifact}: {tensor}: external data")
    return files


def _read_config(path: str) -> dict:
    import jsonschema

    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        raise InvalidArgument(f"{path}: the config is {size} bytes; at most {MAX_CONFIG_BYTES} are allowed")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.load(text, Loader=_no_alias_loader())  # noqa: S506 (a SafeLoader)
    except Exception as e:  # a parse error of any kind: report where
        raise InvalidArgument(f"{path}: cannot parse: {_clip(str(e))}") from e
    try:
        jsonschema.validate(data, PACKAGE_SCHEMA)
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise InvalidArgument(f"{path}: field {where}: {_schema_message(e)}") from None
    return data


@functools.lru_cache(maxsize=None)
def _no_alias_loader():
    """yaml.SafeLoader that refuses aliases (and so merge keys): an alias re-uses a node, and a
    few nested ones make a 600-byte file gigabytes once its value is walked ("billion laughs")."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"found alias *{event.anchor[:40]}: YAML aliases are not allowed in a model config "
                    f"(write the value out)", event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasLoader


def _schema_message(e) -> str:
    """jsonschema's message, without quoting a list or mapping that has the wrong type (it may be huge)."""
    if e.validator == "type" and (e.instance is None or isinstance(e.instance, (list, dict))):
        want = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        want = ", ".join(want[:-1]) + " or " + want[-1] if len(want) > 1 else want[0]
        got = "null" if e.instance is None else "a list" if isinstance(e.instance, list) else "an object (mapping)"
        return f"must be a {want}, got {got}"
    return _clip(e.message)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


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
