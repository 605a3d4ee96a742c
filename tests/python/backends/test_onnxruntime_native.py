"""The native ONNX Runtime backend (csrc/ort/, _core.OrtBackend): the same results as the
onnxruntime Python API bit for bit, the same signature checks and options, clear errors, and a
failing row that fails alone."""

import os
import threading

import numpy as np
import pytest

import inferline as il
from inferline import _core
from inferline.backends import BackendSpec, make_backend
from inferline.backends.onnxruntime import ort_library
from inferline.errors import FailedPrecondition, InvalidArgument

from .test_onnxruntime import I64, F32, helper, mlp_config, mlp_weights, save_graph, save_mlp, save_two_io

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(bool(_core.NATIVE_ORT), reason=_core.NATIVE_ORT or "built")


@pytest.fixture
def mlp(tmp_path):
    w, b = mlp_weights(features=4, hidden=3, seed=7)
    return save_mlp(tmp_path / "model.onnx", w, b)


def _two_io_config(**kw):
    return il.ModelConfig(name="m", inputs=[("x", "float32", (-1, 4)), ("k", "int64", (-1, 2))],
                          outputs=[("y", "float32", (-1, 3)), ("c", "int64", (-1, 2))],
                          batching=il.BatchingConfig(max_batch_size=16, max_queue_delay_us=2000), **kw)


def test_default_is_native_and_reports_the_graph(mlp):
    factory = make_backend(BackendSpec(), mlp)
    backend = factory.create(mlp_config())
    assert isinstance(backend, _core.OrtBackend) and factory.native is backend and factory.session is None
    assert backend.library_version == ort.__version__
    assert backend.inputs == [("x", "tensor(float)", ["N", 4])]
    assert backend.outputs == [("y", "tensor(float)", ["N", 3])]
    session = ort.InferenceSession(mlp, providers=["CPUExecutionProvider"])
    assert [(a.name, a.type, a.shape) for a in session.get_inputs()] == backend.inputs


@pytest.mark.parametrize("rows", [1, 3, 16, 40])
def test_results_equal_the_python_api_bit_for_bit(engine, rng, tmp_path, rows):
    w, b = mlp_weights(seed=3)
    path = save_two_io(tmp_path / "two.onnx", w, b)
    for version, native in ((1, True), (2, False)):
        engine.load(_two_io_config(version=version), make_backend(BackendSpec(native=native), path))
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    k = rng.integers(-1000, 1000, (rows, 2)).astype(np.int64)
    native = engine.infer("m", {"x": x, "k": k}, version=1)
    python = engine.infer("m", {"x": x, "k": k}, version=2)
    direct = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["y", "c"], {"x": x, "k": k})
    for name, want in zip(("y", "c"), direct):
        assert native[name].dtype == want.dtype and native[name].shape == want.shape
        np.testing.assert_array_equal(native[name], python[name])
        np.testing.assert_array_equal(native[name], want)


def test_demo_models_answer_their_golden_outputs_bit_for_bit():
    from inferline.models.loader import load_into_engine
    from inferline.models.package import load_package
    import inferline.demo_models
    root = os.path.dirname(inferline.demo_models.__file__)
    for name in ("digits-mlp", "digits-logreg"):
        package = load_package(os.path.join(root, name))
        with il.Engine() as engine:
            load_into_engine(engine, package, 1)
            assert package.backend.native is None  # the default: native where built
            inputs, outputs = package.golden_arrays()
            futures = [engine.submit(name, {k: v[i:i + 1] for k, v in inputs.items()})
                       for i in range(len(next(iter(inputs.values()))))]
            for key, want in outputs.items():
                got = np.concatenate([f.result(timeout=10)[key] for f in futures])
                np.testing.assert_array_equal(got, want, err_msg=f"{name}.{key}")


def test_many_threads_and_instances_give_batch_invariant_results(engine, rng, mlp):
    engine.load(mlp_config(instances=2, max_batch=8), make_backend(BackendSpec(), mlp))
    xs = rng.standard_normal((400, 4)).astype(np.float32)
    alone = np.concatenate([engine.infer("m", {"x": xs[i:i + 1]})["y"] for i in range(40)])
    results = [None] * len(xs)

    def client(lo, hi):
        futures = [(i, engine.submit("m", {"x": xs[i:i + 1]})) for i in range(lo, hi)]
        for i, f in futures:
            results[i] = f.result(timeout=30)["y"]

    threads = [threading.Thread(target=client, args=(i * 100, (i + 1) * 100)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.model("m").stats()["mean_batch_size"] > 1
    np.testing.assert_array_equal(np.concatenate(results[:40]), alone)
    session = ort.InferenceSession(mlp, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(np.concatenate(results), session.run(["y"], {"x": xs})[0])


def test_a_row_that_fails_in_onnx_runtime_fails_alone(engine, tmp_path):
    """Gather with an index past the table: ONNX Runtime refuses the batch; the engine re-runs its
    halves, so only the bad row fails, with ONNX Runtime's reason, and the process lives on."""
    table = np.arange(30, dtype=np.float32).reshape(10, 3)
    path = save_graph(tmp_path / "gather.onnx", [helper.make_node("Gather", ["T", "i"], ["v"])],
                      [("i", I64, ["N", 1])], [("v", F32, ["N", 1, 3])], [("T", table)])
    config = il.ModelConfig(name="g", inputs=[("i", "int64", (-1, 1))], outputs=[("v", "float32", (-1, 1, 3))],
                            batching=il.BatchingConfig(max_batch_size=8, max_queue_delay_us=20000))
    engine.load(config, make_backend(BackendSpec(), path))
    futures = [engine.submit("g", {"i": np.array([[i]], np.int64)}) for i in (1, 2, 99, 4)]
    good = [futures[j].result(timeout=10)["v"] for j in (0, 1, 3)]
    for got, i in zip(good, (1, 2, 4)):
        np.testing.assert_array_equal(got, table[i][None, None])
    with pytest.raises(il.errors.InferlineError, match="(?i)indices|out of|bounds"):
        futures[2].result(timeout=10)
    np.testing.assert_array_equal(engine.infer("g", {"i": np.array([[9]], np.int64)})["v"], table[9][None, None])


def test_signature_mismatch_is_refused_through_the_native_session(mlp):
    config = il.ModelConfig(name="m", inputs=[("x", "float64", (-1, 4))], outputs=[("y", "float32", (-1, 3))])
    with pytest.raises(InvalidArgument, match=r"input 'x' is float64 \[-1, 4\] in the config but float32"):
        make_backend(BackendSpec(native=True), mlp).create(config)


def test_bad_files_and_libraries_are_clear_errors(tmp_path, mlp):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    with pytest.raises(InvalidArgument, match=r"ONNX Runtime .* cannot load .*junk.onnx"):
        make_backend(BackendSpec(native=True), junk).create(mlp_config())
    with pytest.raises(_core.CoreError, match="cannot load ONNX Runtime library /nonexistent/libonnxruntime.so") as e:
        _core.ort_backend("/nonexistent/libonnxruntime.so", mlp, intra_op_threads=1, output_names=["y"])
    assert _core.STATUS_NAMES[e.value.code] == "FAILED_PRECONDITION"
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if os.path.exists(libc):
        with pytest.raises(_core.CoreError, match="no OrtGetApiBase: not an ONNX Runtime library"):
            _core.ort_backend(libc, mlp, intra_op_threads=1, output_names=["y"])
    with pytest.raises(_core.CoreError, match="graph optimisation level must be"):
        _core.ort_backend(ort_library(ort), mlp, intra_op_threads=1, graph_optimization=5, output_names=["y"])


def test_native_true_refuses_what_it_cannot_serve(mlp):
    spec = BackendSpec(native=True, providers=("CPUExecutionProvider", "CUDAExecutionProvider"))
    with pytest.raises((FailedPrecondition, InvalidArgument)):
        make_backend(spec, mlp).create(mlp_config())
    spec = BackendSpec(native=True, providers=({"name": "CPUExecutionProvider", "options": {}},))
    with pytest.raises(FailedPrecondition, match="backend.native is true but .* CPU provider without provider options"):
        make_backend(spec, mlp).create(mlp_config())
    python = make_backend(BackendSpec(providers=({"name": "CPUExecutionProvider", "options": {}},)), mlp)
    python.create(mlp_config())
    assert python.native is None and python.session is not None  # None: falls back to the Python API


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc")
def test_intra_op_threads_follow_the_spec(mlp):
    """ONNX Runtime's intra-op pool has threads - 1 threads of its own (the caller is the last)."""
    keep = []
    for threads, extra in ((1, 0), (4, 3)):
        before = _threads()
        keep.append(make_backend(BackendSpec(threads=threads), mlp).create(mlp_config()))
        assert _threads() - before == extra, f"threads={threads}"


def test_package_setting_native_false_uses_the_python_api(tmp_path, mlp):
    import json
    import shutil
    from inferline.models.package import load_package
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(mlp, pkg / "model.onnx")
    (pkg / "model.json").write_text(json.dumps({
        "name": "m", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
        "backend": {"name": "onnxruntime", "native": False}}))
    package = load_package(str(pkg))
    assert package.backend.native is False
    factory = make_backend(package.backend, package.artifact_path)
    factory.create(package.config)
    assert factory.native is None and factory.describe()["api"] == "python"


def test_a_library_that_cannot_be_loaded_falls_back_to_the_python_api(monkeypatch, engine, rng, mlp, caplog):
    """native unset: an onnxruntime whose library the core cannot load (older than its C API, say)
    still serves, through the Python API, saying why; native: true refuses instead."""
    from inferline.backends import onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "ort_library", lambda _ort: "/nonexistent/libonnxruntime.so.1.0.0")
    factory = make_backend(BackendSpec(), mlp)
    engine.load(mlp_config(), factory)
    assert factory.native is None and factory.session is not None
    assert "cannot load ONNX Runtime library /nonexistent" in caplog.text
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(engine.infer("m", {"x": x})["y"], factory.session.run(["y"], {"x": x})[0])
    with pytest.raises(FailedPrecondition, match="cannot load ONNX Runtime library"):
        make_backend(BackendSpec(native=True), mlp).create(mlp_config())
