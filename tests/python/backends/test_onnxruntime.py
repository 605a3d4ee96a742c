"""ONNX Runtime backend: real graphs built here with onnx.helper, served through the engine."""

import asyncio
import sys

import numpy as np
import pytest

import inferline as il
from inferline.backends import BackendSpec, make_backend
from inferline.backends.onnxruntime import SPIN_OPTIONS, OnnxRuntimeBackend, serving_threads, signature_from_onnx
from inferline.errors import FailedPrecondition, InvalidArgument

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

F32, I64, U8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8


def save_graph(path, nodes, inputs, outputs, initializers=()):
    """inputs/outputs: (name, elem_type, dims); writes an opset-17 model that ORT 1.17+ reads."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs],
                              initializer=[numpy_helper.from_array(a, n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def mlp_weights(features=4, hidden=3, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((features, hidden)).astype(np.float32), r.standard_normal(hidden).astype(np.float32)


def save_mlp(path, w, b, batch="N"):
    """y = relu(x @ w + b)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    return save_graph(path, nodes, [("x", F32, [batch, w.shape[0]])], [("y", F32, [batch, w.shape[1]])],
                      [("W", w), ("B", b)])


def mlp_ref(x, w, b):
    return np.maximum(x.astype(np.float64) @ w + b, 0)


def save_two_io(path, w, b):
    """Inputs x float32 [N, 4], k int64 [N, 2]; outputs y = relu(x @ w + b), c = k * 3 + 1 (int64)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"]), helper.make_node("Mul", ["k", "three"], ["k3"]),
             helper.make_node("Add", ["k3", "one"], ["c"])]
    return save_graph(path, nodes, [("x", F32, ["N", 4]), ("k", I64, ["N", 2])],
                      [("y", F32, ["N", 3]), ("c", I64, ["N", 2])],
                      [("W", w), ("B", b), ("three", np.array(3, np.int64)), ("one", np.array(1, np.int64))])


def mlp_config(name="m", features=4, hidden=3, max_batch=16, **kw):
    return il.ModelConfig(name=name, inputs=[("x", "float32", (-1, features))], outputs=[("y", "float32", (-1, hidden))],
                          batching=il.BatchingConfig(max_batch_size=max_batch, max_queue_delay_us=5000), **kw)


@pytest.fixture
def mlp(tmp_path):
    w, b = mlp_weights()
    return save_mlp(tmp_path / "model.onnx", w, b), w, b


# ---- end to end -------------------------------------------------------------------------
async def test_single_rows_from_many_tasks_match_numpy_and_one_at_a_time(engine, rng, mlp):
    path, w, b = mlp
    handle = engine.load(mlp_config(), make_backend(BackendSpec(), path))
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(300)]
    batched = await asyncio.gather(*(engine.infer_async("m", {"x": x}) for x in xs))
    assert handle.stats()["mean_batch_size"] > 1  # the rows really shared batches
    for x, r in zip(xs, batched):
        assert r["y"].dtype == np.float32 and r["y"].shape == (1, 3)
        np.testing.assert_allclose(r["y"], mlp_ref(x, w, b), rtol=1e-5, atol=1e-5)
    alone = [engine.infer("m", {"x": x}) for x in xs[:40]]  # sequential: batches of one row
    for r_alone, r_batched in zip(alone, batched):
        np.testing.assert_array_equal(r_alone["y"], r_batched["y"])


def test_multi_row_requests_and_instances(engine, rng, mlp):
    path, w, b = mlp
    engine.load(mlp_config(instances=2), make_backend(BackendSpec(threads=1), path))
    futures = []
    for rows in [1, 5, 16, 40, 3]:  # 40 > max_batch_size: split by the engine
        x = rng.standard_normal((rows, 4)).astype(np.float32)
        futures.append((x, engine.submit("m", {"x": x})))
    for x, f in futures:
        np.testing.assert_allclose(f.result(timeout=10)["y"], mlp_ref(x, w, b), rtol=1e-5, atol=1e-5)


def test_int64_path_and_names_in_any_order(engine, rng, tmp_path):
    w, b = mlp_weights()
    path = save_two_io(tmp_path / "two.onnx", w, b)
    # declared order differs from the graph's: tensors are matched by name
    config = il.ModelConfig(name="two", inputs=[("k", "int64", (-1, 2)), ("x", "float32", (-1, 4))],
                            outputs=[("c", "int64", (-1, 2)), ("y", "float32", (-1, 3))])
    engine.load(config, make_backend(BackendSpec(), path))
    k = rng.integers(-1000, 1000, (7, 2)).astype(np.int64)
    x = rng.standard_normal((7, 4)).astype(np.float32)
    out = engine.infer("two", {"k": k, "x": x})
    assert out["c"].dtype == np.int64
    np.testing.assert_array_equal(out["c"], k * 3 + 1)
    np.testing.assert_allclose(out["y"], mlp_ref(x, w, b), rtol=1e-5, atol=1e-5)


def test_preprocessed_inputs_are_checked_in_backend_facing_form(engine, rng, tmp_path):
    # image: uint8 NHWC [-1, 8, 8, 3] from callers, float32 NCHW [N, 3, 8, 8] for the graph
    nodes = [helper.make_node("ReduceMean", ["img"], ["m"], axes=[2, 3], keepdims=0)]
    path = save_graph(tmp_path / "img.onnx", nodes, [("img", F32, ["N", 3, 8, 8])], [("m", F32, ["N", 3])])
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    config = il.ModelConfig(name="img", inputs=[("img", "uint8", (-1, 8, 8, 3))], outputs=[("m", "float32", (-1, 3))],
                            preprocessing={"img": il.ImagePreprocess(8, 8, mean, std)})
    engine.load(config, make_backend(BackendSpec(), path))
    img = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    ref = ((img.astype(np.float64) - mean) / std).mean(axis=(1, 2))
    np.testing.assert_allclose(engine.infer("img", {"img": img})["m"], ref, rtol=1e-5, atol=1e-5)
    # a graph that wants the raw uint8 NHWC tensor does not fit the preprocessed input
    raw = save_graph(tmp_path / "raw.onnx", [helper.make_node("Identity", ["img"], ["m"])],
                     [("img", U8, ["N", 8, 8, 3])], [("m", U8, ["N", 8, 8, 3])])
    bad = il.ModelConfig(name="img", version=2, inputs=config.inputs, outputs=[("m", "uint8", (-1, 8, 8, 3))],
                         preprocessing=config.preprocessing)
    with pytest.raises(InvalidArgument) as e:
        engine.load(bad, make_backend(BackendSpec(), raw))
    assert ("model 'img' version 2: input 'img' (after image preprocessing) is float32 [-1, 3, 8, 8] in the config "
            "but uint8 ['N', 8, 8, 3] in raw.onnx") in str(e.value)


def test_tabular_preprocessing_keeps_the_shape(engine, rng, mlp):
    path, w, b = mlp
    config = mlp_config(preprocessing={"x": il.TabularPreprocess(mean=(1.0,), std=(2.0,))})
    engine.load(config, make_backend(BackendSpec(), path))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(engine.infer("m", x)["y"], mlp_ref((x - 1) / 2, w, b), rtol=1e-5, atol=1e-5)


# ---- signature checks --------------------------------------------------------------------
@pytest.mark.parametrize("inputs, outputs, expected", [
    ([("z", "float32", (-1, 4))], [("y", "float32", (-1, 3))], "input 'z' is not an input of model.onnx (its inputs: x)"),
    ([("x", "float32", (-1, 4))], [("out", "float32", (-1, 3))], "output 'out' is not an output of model.onnx"),
    ([("x", "float64", (-1, 4))], [("y", "float32", (-1, 3))],
     "input 'x' is float64 [-1, 4] in the config but float32 ['N', 4] in model.onnx"),
    ([("x", "float32", (-1, 4))], [("y", "int64", (-1, 3))],
     "output 'y' is int64 [-1, 3] in the config but float32 ['N', 3] in model.onnx"),
    ([("x", "float32", (-1, 4, 1))], [("y", "float32", (-1, 3))],
     "input 'x' is float32 [-1, 4, 1] in the config but float32 ['N', 4] in model.onnx"),
    ([("x", "float32", (-1, 64))], [("y", "float32", (-1, 3))],
     "input 'x' is float32 [-1, 64] in the config but float32 ['N', 4] in model.onnx"),
    ([("x", "float32", (-1, 4))], [("y", "float32", (-1, 7))],
     "output 'y' is float32 [-1, 7] in the config but float32 ['N', 3] in model.onnx"),
])
def test_signature_mismatch_is_refused_naming_the_tensor(engine, mlp, inputs, outputs, expected):
    config = il.ModelConfig(name="m", version=2, inputs=inputs, outputs=outputs)
    with pytest.raises(InvalidArgument) as e:
        engine.load(config, make_backend(BackendSpec(), mlp[0]))
    assert str(e.value).startswith("model 'm' version 2: ")
    assert expected in str(e.value)
    assert engine.models() == []


def test_every_mismatch_is_reported_at_once(engine, mlp):
    config = il.ModelConfig(name="m", inputs=[("x", "float64", (-1, 4))], outputs=[("y", "float32", (-1, 9))])
    with pytest.raises(InvalidArgument, match=r"input 'x' is float64 .*; output 'y' is float32 \[-1, 9\]"):
        make_backend(BackendSpec(), mlp[0]).create(config)


def test_undeclared_graph_input_is_refused(engine, tmp_path):
    w, b = mlp_weights()
    path = save_two_io(tmp_path / "two.onnx", w, b)
    config = il.ModelConfig(name="two", inputs=[("x", "float32", (-1, 4))], outputs=[("y", "float32", (-1, 3))])
    with pytest.raises(InvalidArgument, match=r"two.onnx input 'k' \(int64 \['N', 2\]\) is not declared"):
        engine.load(config, make_backend(BackendSpec(), path))


def test_free_output_dim_in_config_accepts_a_fixed_graph_dim(engine, mlp):
    config = il.ModelConfig(name="m", inputs=[("x", "float32", (-1, 4))], outputs=[("y", "float32", (-1, -1))])
    engine.load(config, make_backend(BackendSpec(), mlp[0]))
    assert engine.infer("m", np.ones((2, 4), np.float32))["y"].shape == (2, 3)


def test_fixed_batch_dim_is_refused_unless_batches_have_one_row(engine, rng, tmp_path):
    w, b = mlp_weights()
    for batch in (1, 8):
        path = save_mlp(tmp_path / f"fixed{batch}.onnx", w, b, batch=batch)
        with pytest.raises(InvalidArgument, match=rf"input 'x' has a fixed batch dim {batch} in fixed{batch}.onnx"):
            engine.load(mlp_config(max_batch=16), make_backend(BackendSpec(), path))
    # a fixed 1 serves when every batch has one row
    engine.load(mlp_config(max_batch=1), make_backend(BackendSpec(), tmp_path / "fixed1.onnx"))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(engine.infer("m", x)["y"], mlp_ref(x, w, b), rtol=1e-5, atol=1e-5)


def test_missing_and_corrupt_files_are_refused_naming_them(engine, tmp_path):
    with pytest.raises(InvalidArgument, match=r"model 'm' version 1: ONNX model .*nope.onnx does not exist"):
        engine.load(mlp_config(), make_backend(BackendSpec(), tmp_path / "nope.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(InvalidArgument, match=r"model 'm' version 1: (onnxruntime|ONNX Runtime) .* cannot load .*junk.onnx"):
        engine.load(mlp_config(), make_backend(BackendSpec(), junk))


# ---- backend settings ---------------------------------------------------------------------
def test_unknown_provider_is_refused_listing_available_ones(mlp):
    spec = BackendSpec(providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(InvalidArgument) as e:
        make_backend(spec, mlp[0]).create(mlp_config())
    msg = str(e.value)
    assert "model 'm' version 1: backend.providers: NoSuchExecutionProvider not available" in msg
    assert "CPUExecutionProvider" in msg.split("available:")[1]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present")
def test_cuda_device_asks_for_the_cuda_provider(mlp):
    with pytest.raises(InvalidArgument, match="CUDAExecutionProvider not available"):
        make_backend(BackendSpec(device="cuda:0"), mlp[0]).create(mlp_config())


def test_provider_entries_with_options(mlp):
    spec = BackendSpec(providers=({"name": "CPUExecutionProvider", "options": {}},))
    backend = make_backend(spec, mlp[0])
    backend.create(mlp_config())
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(InvalidArgument, match="backend.providers entries are names"):
        make_backend(BackendSpec(providers=(42,)), mlp[0]).create(mlp_config())


def test_session_options_follow_the_spec(mlp):
    """Through the onnxruntime Python API, whose session shows its options (the native backend gets
    the same ones: test_onnxruntime_native.py)."""
    spec = BackendSpec(threads=2, inter_op_threads=3, graph_optimization="basic", native=False,
                       options={"session.intra_op.allow_spinning": "0", "session.use_env_allocators": False})
    backend = make_backend(spec, mlp[0])
    assert isinstance(backend, OnnxRuntimeBackend)
    backend.create(mlp_config())
    so = backend.session.get_session_options()
    assert so.intra_op_num_threads == 2
    assert so.inter_op_num_threads == 3
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.use_env_allocators") == "0"
    default = make_backend(BackendSpec(native=False), mlp[0])
    default.create(mlp_config())
    assert default.session.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_unset_threads_and_spinning_get_serving_defaults(mlp):
    """A spec that leaves them unset (a bare .onnx) gets serving_threads() intra-op threads and no
    spinning, not ONNX Runtime's every-core spinning pool; what a spec sets wins."""
    default = make_backend(BackendSpec(native=False), mlp[0])
    default.create(mlp_config())
    so = default.session.get_session_options()
    assert so.intra_op_num_threads == serving_threads()
    assert [so.get_session_config_entry(k) for k in SPIN_OPTIONS] == ["0", "0"]
    spinning = make_backend(BackendSpec(threads=2, native=False, options={"session.intra_op.allow_spinning": True}),
                            mlp[0])
    spinning.create(mlp_config())
    so = spinning.session.get_session_options()
    assert so.intra_op_num_threads == 2 and so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (4, 1), (5, 1), (8, 2), (16, 4), (64, 8), (256, 8)])
def test_serving_threads_leave_cores_to_the_server(cores, threads):
    assert serving_threads(cores) == threads


def test_bad_thread_counts_are_refused():
    with pytest.raises(InvalidArgument, match="backend.inter_op_threads must be >= 1"):
        BackendSpec(inter_op_threads=0)


@pytest.mark.parametrize("native", [False, None])
def test_describe_reports_runtime_env(mlp, native):
    backend = make_backend(BackendSpec(native=native), mlp[0])
    backend.create(mlp_config())
    env = backend.describe()
    api = "python" if native is False or il._core.NATIVE_ORT else "native"
    assert env == {"backend": "onnxruntime", "onnxruntime": ort.__version__, "providers": ["CPUExecutionProvider"],
                   "api": api, "numpy": np.__version__}


def test_missing_onnxruntime_is_a_failed_precondition(monkeypatch, mlp):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    backend = make_backend(BackendSpec(), mlp[0])  # the module itself imports without it
    with pytest.raises(FailedPrecondition, match="pip install onnxruntime"):
        backend.create(mlp_config())


# ---- bare .onnx signature ---------------------------------------------------------------------
def save_bare(tmp_path):
    """Fixed batch 1 on x, symbolic dims on k and c, an initializer listed as an input (IR < 4 style)."""
    w, b = mlp_weights()
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"]),
             helper.make_node("Identity", ["k"], ["c"])]
    graph = helper.make_graph(
        nodes, "bare",
        [helper.make_tensor_value_info("x", F32, [1, 4]), helper.make_tensor_value_info("k", I64, ["batch", "t"]),
         helper.make_tensor_value_info("W", F32, [4, 3])],
        [helper.make_tensor_value_info("y", F32, ["batch", 3]), helper.make_tensor_value_info("c", I64, ["b", "t"])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("with_onnx", [True, False])
def test_signature_from_bare_onnx(monkeypatch, tmp_path, with_onnx):
    path = save_bare(tmp_path)
    if not with_onnx:
        monkeypatch.setitem(sys.modules, "onnx", None)  # falls back to an InferenceSession's metadata
    inputs, outputs = signature_from_onnx(path)
    assert inputs == [il.TensorSpec("x", "float32", (-1, 4)), il.TensorSpec("k", "int64", (-1, -1))]
    assert outputs == [il.TensorSpec("y", "float32", (-1, 3)), il.TensorSpec("c", "int64", (-1, -1))]


def test_signature_from_onnx_serves_the_graph(engine, rng, mlp):
    path, w, b = mlp
    inputs, outputs = signature_from_onnx(path)
    engine.load(il.ModelConfig(name="bare", inputs=inputs, outputs=outputs), make_backend(BackendSpec(), path))
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(engine.infer("bare", x)["y"], mlp_ref(x, w, b), rtol=1e-5, atol=1e-5)


def test_signature_from_onnx_refuses_what_it_cannot_serve(tmp_path):
    path = save_graph(tmp_path / "scalar.onnx", [helper.make_node("Identity", ["s"], ["t"])],
                      [("s", F32, [])], [("t", F32, [])])
    with pytest.raises(InvalidArgument, match=r"input 's' is a scalar \(no batch dim\)"):
        signature_from_onnx(path)
    with pytest.raises(InvalidArgument, match="nope.onnx does not exist"):
        signature_from_onnx(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff")
    with pytest.raises(InvalidArgument, match="junk.onnx is not a readable ONNX model"):
        signature_from_onnx(junk)
