"""python/inferline/_core.pyi names exactly what the binding defines."""

import ast
import pathlib

import pytest

import inferline
from inferline import _core

STUB = pathlib.Path(inferline.__file__).with_name("_core.pyi")
NATIVE_ONLY = {"NativeFrontend", "ControlReply", "GrpcLoad"}
"""Stubbed always, defined only by a build with the native gRPC frontend (_core.NATIVE_FRONTEND == "")."""
ORT_ONLY = {"OrtBackend", "ort_backend"}
"""Stubbed always, defined only by a build with the native ONNX Runtime backend (_core.NATIVE_ORT == "")."""


def _public(names) -> set:
    return {n for n in names if not n.startswith("_")}


def _stub_names() -> tuple:
    """({module-level name}, {class name: {member name}}) declared by the stub."""
    tree = ast.parse(STUB.read_text())
    top, classes = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            classes[node.name] = _public(members)
            top.add(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            top.add(node.target.id)
    return _public(top), classes


def _raised_core_error() -> _core.CoreError:
    with pytest.raises(_core.CoreError) as e:
        _core.Engine().get("nothing-loaded")
    return e.value


def _built(names) -> set:
    names = names - NATIVE_ONLY if _core.NATIVE_FRONTEND else names
    return names - ORT_ONLY if _core.NATIVE_ORT else names


def test_module_names_match():
    top, _ = _stub_names()
    top = _built(top)
    assert top == _public(dir(_core)), "update python/inferline/_core.pyi"


def test_class_members_match():
    _, classes = _stub_names()
    for name in _built(set(classes)):
        members = classes[name]
        cls = getattr(_core, name)
        runtime = _public(vars(cls))
        if issubclass(cls, BaseException):  # attributes live on the instances
            runtime |= _public(vars(_raised_core_error()))
        assert members == runtime, f"_core.{name}: update python/inferline/_core.pyi"


def test_core_error_carries_code_and_message():
    e = _raised_core_error()
    assert e.code == 5 and _core.STATUS_NAMES[e.code] == "NOT_FOUND"
    assert e.message == str(e) and "'nothing-loaded' is not loaded" in e.message
    mapped = inferline.errors.from_core_error(e)
    assert isinstance(mapped, inferline.errors.ModelNotFound) and mapped.message == e.message
