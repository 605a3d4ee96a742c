"""Hostile packages at `inferline models push` (issue 19, findings 7-9): a YAML alias bomb and
non-scalar backend options, symlinks that lead out of the package, and ONNX external data
(stored with the package and served back; references that escape the package refused).

Each package is real files in tmp_path and a real onnx model: y = x @ W, x FP32 [-1, 4],
W a 4x3 initializer (inline, or external data in weights.bin).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from inferline.errors import InvalidArgument
from inferline.models.package import write_golden
from inferline.models.service import open_registry, push
from helpers import child_command
from server_fixtures import ServerProcess

W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 4.0
X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], dtype=np.float32)
CONFIG = {"name": "matmul", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
          "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
          "backend": {"name": "onnxruntime", "threads": 1}, "batching": {"max_batch_size": 4}}
SECRET = "outside-secret-4f1d"
"""Text in files outside the package: no error may print it."""


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFERLINE_REPOSITORY", raising=False)


def _model(weights: np.ndarray = W) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _package(root, name="pkg", config=None, yaml_text=None, golden=False, external=False, weights=W) -> str:
    """A package directory: model.onnx (W inline, or in weights.bin), model.json or model.yaml."""
    pkg = os.path.join(str(root), name)
    os.makedirs(pkg)
    path = os.path.join(pkg, "model.onnx")
    if external:
        onnx.save_model(_model(weights), path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
    else:
        onnx.save_model(_model(weights), path)
    config = dict(config or CONFIG)
    if golden:
        write_golden(os.path.join(pkg, "golden.npz"), {"x": X}, {"y": X @ weights})
        config["golden"] = {"file": "golden.npz"}
    if yaml_text is not None:
        with open(os.path.join(pkg, "model.yaml"), "w", encoding="utf-8") as f:
            f.write(yaml_text)
    else:
        with open(os.path.join(pkg, "model.json"), "w", encoding="utf-8") as f:
            json.dump(config, f)
    return pkg


def _move_out(pkg: str, rel: str, outside: str) -> str:
    """Moves ``pkg/rel`` to ``outside`` and leaves a symlink to it in its place."""
    os.makedirs(os.path.dirname(outside), exist_ok=True)
    os.replace(os.path.join(pkg, rel), outside)
    os.symlink(outside, os.path.join(pkg, rel))
    return outside


def _refused(repo: str, pkg: str, match: str) -> str:
    """Pushes ``pkg``, expecting InvalidArgument matching ``match``; checks nothing was stored."""
    registry = open_registry(repo)
    try:
        with pytest.raises(InvalidArgument, match=match) as info:
            push(registry, pkg)
        assert registry.list() == []
    finally:
        registry.close()
    return str(info.value)


def _cli_push(repo: str, pkg: str, timeout: float = 30, memory_bytes: int = 0):
    """`python -m inferline models push` as a subprocess: (CompletedProcess, wall seconds)."""
    cmd = [sys.executable, "-m", "inferline", "models", "push", pkg, "--repository", repo]
    t0 = time.monotonic()
    done = subprocess.run(child_command(cmd, address_space_bytes=memory_bytes), capture_output=True, text=True,
                          timeout=timeout)
    return done, time.monotonic() - t0


# ---- finding 7: YAML aliases, non-scalar options ----------------------------------------------------
BOMB = """\
name: bomb
inputs: [{name: x, dtype: float32, shape: [-1, 4]}]
outputs: [{name: y, dtype: float32, shape: [-1, 3]}]
backend:
  name: onnxruntime
  options:
    lol:
    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
    - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    - &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    - &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    - &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    - &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_yaml_alias_bomb_fails_fast_with_bounded_memory(tmp_path):
    """Before the fix this push ran past 60 s and several GB (the options were stringified)."""
    pkg = _package(tmp_path, yaml_text=BOMB)
    assert os.path.getsize(os.path.join(pkg, "model.yaml")) < 700
    done, wall_s = _cli_push(str(tmp_path / "repo"), pkg, timeout=30, memory_bytes=3 << 30)
    assert done.returncode == 1, done.stderr[-2000:]
    assert wall_s < 20
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert "model.yaml" in done.stderr and "alias" in done.stderr
    assert len(done.stderr) < 1000  # the error names the problem, it does not print the expansion


def test_yaml_aliases_refused_anywhere(tmp_path):
    text = ("name: aliased\ninputs: [&spec {name: x, dtype: float32, shape: [-1, 4]}]\n"
            "outputs: [{name: y, dtype: float32, shape: [-1, 3]}]\nlabels: {a: &t tag, b: *t}\n")
    message = _refused(str(tmp_path / "repo"), _package(tmp_path, yaml_text=text), r"model\.yaml.*alias")
    assert "line 4" in message  # where the alias is


@pytest.mark.parametrize("value, kind", [([1, 2], "list"), ({"k": "v"}, "object"), (None, "null")])
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_non_scalar_backend_option_refused_naming_file_and_key(tmp_path, value, kind, fmt):
    config = {**CONFIG, "backend": {"name": "onnxruntime", "options": {"session.ok": "1", "bad_key": value}}}
    yaml_text = json.dumps(config) if fmt == "yaml" else None  # JSON is YAML too
    pkg = _package(tmp_path, config=config, yaml_text=yaml_text)
    name = "model.yaml" if fmt == "yaml" else "model.json"
    message = _refused(str(tmp_path / "repo"), pkg, rf"{name}: field backend\.options\.bad_key: .*{kind}")
    assert "string, integer, number or boolean" in message


def test_scalar_backend_options_still_pass(tmp_path):
    config = {**CONFIG, "backend": {"name": "onnxruntime",
                                    "options": {"session.intra_op.allow_spinning": "0",
                                                "session.use_env_allocators": 0}}}
    registry = open_registry(str(tmp_path / "repo"))
    try:
        assert push(registry, _package(tmp_path, config=config)).ref == "matmul:1"
    finally:
        registry.close()


# ---- finding 8: symlinks out of the package -----------------------------------------------------------
@pytest.mark.parametrize("rel", ["model.onnx", "golden.npz", "model.yaml"])
def test_symlinked_file_refused_without_reading_it(tmp_path, rel):
    pkg = _package(tmp_path, golden=True, yaml_text=json.dumps({**CONFIG, "golden": {"file": "golden.npz"}}))
    write_golden(os.path.join(pkg, "golden.npz"), {"x": X}, {"y": X @ W})
    outside = _move_out(pkg, rel, str(tmp_path / "outside" / rel))
    if rel == "model.yaml":  # outside content that parses (as a string) and fails validation
        with open(outside, "w", encoding="utf-8") as f:
            f.write(f"{SECRET} root:x:0:0\n")
    message = _refused(str(tmp_path / "repo"), pkg, rf"{rel}.* symbolic link")
    assert SECRET not in message and "outside" not in message.replace(pkg, "")


def test_symlinked_directory_in_the_package_refused(tmp_path):
    """External data under data/, where data is a symlink to a directory outside the package."""
    pkg = os.path.join(str(tmp_path), "pkg")
    os.makedirs(pkg)
    os.makedirs(os.path.join(pkg, "data"))
    onnx.save_model(_model(), os.path.join(pkg, "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="data/weights.bin", size_threshold=0)
    outside = str(tmp_path / "outside")
    os.replace(os.path.join(pkg, "data"), outside)
    os.symlink(outside, os.path.join(pkg, "data"))
    with open(os.path.join(pkg, "model.json"), "w", encoding="utf-8") as f:
        json.dump(CONFIG, f)
    _refused(str(tmp_path / "repo"), pkg, r"data/weights\.bin.*symbolic link")


def test_package_directory_given_through_a_symlink_is_fine(tmp_path):
    pkg = _package(tmp_path)
    os.symlink(pkg, str(tmp_path / "link"))
    registry = open_registry(str(tmp_path / "repo"))
    try:
        assert push(registry, str(tmp_path / "link")).ref == "matmul:1"
    finally:
        registry.close()


# ---- finding 9: ONNX external data --------------------------------------------------------------------
def _rest_infer(port: int, name: str, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{name}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = {o["name"]: o for o in json.loads(r.read())["outputs"]}["y"]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def test_external_data_round_trip_push_then_serve(tmp_path):
    pkg = _package(tmp_path, golden=True, external=True)
    assert os.path.isfile(os.path.join(pkg, "weights.bin"))
    assert "raw_data" not in str(onnx.load(os.path.join(pkg, "model.onnx"), load_external_data=False).graph)
    repo = str(tmp_path / "repo")
    done, _ = _cli_push(repo, pkg, timeout=120)
    assert done.returncode == 0 and done.stdout == "matmul:1\n", done.stderr
    registry = open_registry(repo)
    try:
        record = registry.get("matmul", 1)
        assert os.path.isfile(os.path.join(record.model_uri, "weights.bin"))
        with open(os.path.join(record.model_uri, "MANIFEST.json"), encoding="utf-8") as f:
            assert "weights.bin" in [e["name"] for e in json.load(f)["files"]]
    finally:
        registry.close()

    server = ServerProcess(repo)
    try:
        np.testing.assert_allclose(_rest_infer(server.http, "matmul", X), X @ W, rtol=1e-6)
    finally:
        assert server.stop() == 0


def test_external_data_is_part_of_the_content_hash(tmp_path):
    """Same model.onnx and config, other weights.bin: a new version, serving the new weights."""
    from inferline.engine import Engine
    from inferline.models.service import load_version

    registry = open_registry(str(tmp_path / "repo"))
    try:
        first = push(registry, _package(tmp_path, "a", external=True))
        second = push(registry, _package(tmp_path, "b", external=True, weights=W * 2))
        assert (first.version, second.version) == (1, 2) and first.sha256 != second.sha256
        with Engine() as engine:
            handle, _ = load_version(engine, registry, second)
            np.testing.assert_allclose(handle.infer({"x": X})["y"], X @ (W * 2), rtol=1e-6)
    finally:
        registry.close()


def _escaping_package(root, location: str, data_path: str) -> str:
    """A package whose initializer w names ``location`` as its external data; the bytes are at
    ``data_path`` (so that ONNX Runtime could read them if it were asked to)."""
    pkg = os.path.join(str(root), "pkg")
    os.makedirs(pkg, exist_ok=True)
    model = _model()
    tensor = model.graph.initializer[0]
    os.makedirs(os.path.dirname(data_path), exist_ok=True)
    with open(data_path, "wb") as f:
        f.write(tensor.raw_data)
    external_data_helper.set_external_data(tensor, location=location, offset=0, length=len(tensor.raw_data))
    tensor.ClearField("raw_data")
    with open(os.path.join(pkg, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    with open(os.path.join(pkg, "model.json"), "w", encoding="utf-8") as f:
        json.dump(CONFIG, f)
    return pkg


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "missing"])
def test_external_data_escaping_the_package_refused(tmp_path, case):
    outside = str(tmp_path / "outside" / "w.bin")
    pkg_dir = str(tmp_path / "pkg")
    location, data_path, match = {
        "dotdot": ("../outside/w.bin", outside, r"'\.\./outside/w\.bin'.* inside the package"),
        "absolute": (outside, outside, r"w\.bin'.* inside the package"),
        "symlink": ("weights.bin", outside, r"weights\.bin.* symbolic link"),
        "missing": ("weights.bin", outside, r"external data 'weights\.bin'.* missing"),
    }[case]
    pkg = _escaping_package(tmp_path, location, data_path)
    if case == "symlink":
        os.symlink(outside, os.path.join(pkg_dir, "weights.bin"))
    message = _refused(str(tmp_path / "repo"), pkg, rf"model\.onnx: .*{match}")
    assert "initializer 'w'" in message


def test_bare_onnx_file_with_external_data_is_stored_with_it(tmp_path):
    pkg = _package(tmp_path, external=True)
    registry = open_registry(str(tmp_path / "repo"))
    try:
        record = push(registry, os.path.join(pkg, "model.onnx"), name="bare")
        assert sorted(os.listdir(record.model_uri)) == ["MANIFEST.json", "model.json", "model.onnx", "weights.bin"]
    finally:
        registry.close()


def test_without_onnx_external_data_is_refused_not_missed(tmp_path, monkeypatch):
    from inferline.backends.onnxruntime import external_data_locations
    from inferline.errors import FailedPrecondition

    inline, external = _package(tmp_path, "inline"), _package(tmp_path, "external", external=True)
    assert external_data_locations(os.path.join(external, "model.onnx")) == [("initializer 'w'", "weights.bin")]
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    assert external_data_locations(os.path.join(inline, "model.onnx")) == []
    with pytest.raises(FailedPrecondition, match="external data files; listing them needs the onnx package"):
        external_data_locations(os.path.join(external, "model.onnx"))
