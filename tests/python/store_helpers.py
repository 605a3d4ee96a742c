"""Helpers of the registry storage tests: package files, a push through the store API."""

import json
import uuid
from pathlib import Path

ENV = {"backend": "onnxruntime", "onnxruntime": "1.17.0", "python": "3.11"}


def make_files(root, content: bytes, extra: bytes = b"") -> dict:
    """A small package in a fresh directory under root: model.onnx, config.json, golden/inputs.npz."""
    d = Path(root) / uuid.uuid4().hex
    (d / "golden").mkdir(parents=True)
    (d / "model.onnx").write_bytes(content)
    (d / "config.json").write_text(json.dumps({"name": "m", "backend": "onnxruntime"}))
    (d / "golden" / "inputs.npz").write_bytes(b"golden" + extra)
    return {"model.onnx": str(d / "model.onnx"), "config.json": str(d / "config.json"),
            "golden/inputs.npz": str(d / "golden" / "inputs.npz")}


def push(reg, root, name, content: bytes, **kw):
    uri, sha = reg.put_package(name, make_files(root, content))
    kw.setdefault("runtime_env", ENV)
    return reg.add_version(name, sha, uri, **kw)


def versions(reg, name):
    return [r.version for r in reg.list(name)]
