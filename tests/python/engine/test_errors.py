"""Bad input gets a clear error before the queue; backend failures are isolated."""

import asyncio
import threading

import numpy as np
import pytest

import inferline as il
from helpers import make_config, rowwise


@pytest.mark.parametrize("inputs, match", [
    ({"x": np.ones((2, 5), np.float32)}, r"input 'x': expected shape \[-1, 4\].*got \[2, 5\]"),
    ({"x": np.ones((2, 4), np.float64)}, r"input 'x': expected float32, got float64"),
    ({"x": np.ones((4,), np.float32)}, r"input 'x': expected shape \[-1, 4\]"),
    ({"x": np.ones((0, 4), np.float32)}, r"at least one row"),
    ({}, r"input 'x': missing"),
    ({"x": np.ones((1, 4), np.float32), "z": np.ones(1)}, r"unknown input 'z'"),
    ({"x": np.array([["a"] * 4])}, r"input 'x'"),
])
def test_bad_inputs_name_model_version_and_input(engine, inputs, match):
    engine.load(make_config(version=3), rowwise)
    with pytest.raises(il.errors.InvalidArgument, match=match) as e:
        engine.infer("m", inputs)
    assert "model 'm' version 3" in str(e.value)
    assert e.value.grpc_code == "INVALID_ARGUMENT" and e.value.http_status == 400
    # the engine keeps serving
    assert engine.infer("m", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 4)


def test_multi_input_rows_must_agree(engine):
    cfg = il.ModelConfig(name="two", inputs=[("a", "float32", (-1, 2)), ("b", "float32", (-1, 2))],
                         outputs=[("y", "float32", (-1, 2))])
    engine.load(cfg, lambda d: {"y": d["a"] + d["b"]})
    with pytest.raises(il.errors.InvalidArgument, match=r"input 'b': has 3 rows but input 'a' has 2"):
        engine.infer("two", {"a": np.ones((2, 2), np.float32), "b": np.ones((3, 2), np.float32)})


def test_bad_config_names_the_field(engine):
    with pytest.raises(il.errors.InvalidArgument, match="preferred_batch_sizes"):
        engine.load(make_config(batching=il.BatchingConfig(max_batch_size=8, preferred_batch_sizes=(16,))), rowwise)
    with pytest.raises(il.errors.InvalidArgument, match="must start with -1"):
        engine.load(il.ModelConfig(name="b", inputs=[("x", "float32", (4,))], outputs=[("y", "float32", (-1,))]),
                    rowwise)
    with pytest.raises(il.errors.InvalidArgument, match="unknown field"):
        il.ModelConfig.from_dict({"name": "c", "inputs": [], "outputs": [], "max_batch": 3})
    with pytest.raises(il.errors.InvalidArgument, match="batching.mode"):
        engine.load(make_config(batching=il.BatchingConfig(mode="sometimes")), rowwise)
    with pytest.raises(il.errors.InvalidArgument, match="preprocessing names unknown input 'q'"):
        make_config(preprocessing={"q": il.TabularPreprocess(mean=(0,), std=(1,))})
    with pytest.raises(il.errors.InvalidArgument, match=r"std\[1\]"):
        engine.load(make_config(preprocessing={"x": il.TabularPreprocess(mean=(0,), std=(1, 0, 1, 1))}), rowwise)


def poisoned(inputs):
    x = inputs["x"]
    if np.any(x[:, 0] == 666):
        raise ValueError(f"poisoned row in a batch of {len(x)}")
    return {"y": x * 2}


def test_backend_error_isolated_to_failing_requests(engine):
    handle = engine.load(make_config(max_batch=32, delay_us=200_000), poisoned)
    xs = [np.full((1, 4), i, np.float32) for i in range(32)]
    xs[5][0, 0] = 666
    xs[20][0, 0] = 666
    futures = [engine.submit("m", {"x": x}) for x in xs]
    for i, (x, f) in enumerate(zip(xs, futures)):
        if i in (5, 20):
            with pytest.raises(il.errors.InternalError, match="poisoned row in a batch of 1"):
                f.result(timeout=10)
        else:
            np.testing.assert_array_equal(f.result(timeout=10)["y"], x * 2)
    assert handle.stats()["errors"] == 2


def test_backend_wrong_output_is_internal_error(engine):
    engine.load(make_config(), lambda d: {"y": d["x"].astype(np.float64)})
    with pytest.raises(il.errors.InternalError, match="backend output 'y' is float64"):
        engine.infer("m", {"x": np.ones((1, 4), np.float32)})
    engine.load(make_config(name="n"), lambda d: {"z": d["x"]})
    with pytest.raises(il.errors.InternalError, match="no output 'y'"):
        engine.infer("n", {"x": np.ones((1, 4), np.float32)})


def test_queue_full_is_resource_exhausted_and_nothing_lost(engine):
    gate = threading.Event()

    def slow(d):
        gate.wait(10)
        return {"y": d["x"]}

    handle = engine.load(make_config(max_batch=1, delay_us=0, queue_capacity=4, priority_levels=1), slow)
    x = np.ones((1, 4), np.float32)
    accepted, refused = [], 0
    for _ in range(20):
        try:
            accepted.append(engine.submit("m", {"x": x}))
        except il.errors.ResourceExhausted as e:
            assert "queue full" in str(e) and e.grpc_code == "RESOURCE_EXHAUSTED"
            refused += 1
    gate.set()
    assert refused > 0
    for f in accepted:
        assert f.result(timeout=10)["y"].shape == (1, 4)
    assert handle.stats()["rejected"] == refused


def test_deadline_exceeded_never_computed(engine):
    seen = []
    gate = threading.Event()

    def backend(d):
        seen.append(d["x"][:, 0].copy())
        gate.wait(10)
        return {"y": d["x"]}

    engine.load(make_config(max_batch=1, delay_us=0), backend)
    first = engine.submit("m", {"x": np.zeros((1, 4), np.float32)})  # occupies the executor
    late = engine.submit("m", {"x": np.full((1, 4), 7, np.float32)}, timeout_us=20_000)
    threading.Event().wait(0.1)
    gate.set()
    first.result(timeout=10)
    with pytest.raises(il.errors.DeadlineExceeded):
        late.result(timeout=10)
    assert all(7 not in s for s in seen)


async def test_async_errors_propagate(engine):
    engine.load(make_config(), poisoned)
    with pytest.raises(il.errors.InternalError, match="poisoned"):
        await engine.infer_async("m", {"x": np.full((1, 4), 666, np.float32)})
    with pytest.raises(il.errors.InvalidArgument):
        await engine.infer_async("m", {"x": np.ones((1, 3), np.float32)})
    assert (await engine.infer_async("m", {"x": np.ones((1, 4), np.float32)}))["y"][0, 0] == 2


def test_close_answers_everything(rng):
    gate = threading.Event()
    e = il.Engine()
    e.load(make_config(max_batch=2, delay_us=0), lambda d: (gate.wait(10), {"y": d["x"]})[1])
    futures = [e.submit("m", {"x": np.ones((1, 4), np.float32)}) for _ in range(50)]
    threading.Timer(0.05, gate.set).start()
    e.close(drain=True)
    assert all(f.result(timeout=1)["y"].shape == (1, 4) for f in futures)
    with pytest.raises(il.errors.Unavailable, match="engine is shut down"):  # the core's answer after close
        e.infer("m", {"x": np.ones((1, 4), np.float32)})


def test_close_without_drain_cancels_queued():
    gate = threading.Event()
    e = il.Engine()
    e.load(make_config(max_batch=1, delay_us=0), lambda d: (gate.wait(10), {"y": d["x"]})[1])
    futures = [e.submit("m", {"x": np.ones((1, 4), np.float32)}) for _ in range(20)]
    threading.Timer(0.1, gate.set).start()
    e.close(drain=False)
    outcomes = []
    for f in futures:
        try:
            f.result(timeout=5)
            outcomes.append("ok")
        except il.errors.Cancelled:
            outcomes.append("cancelled")
    assert "cancelled" in outcomes and len(outcomes) == 20


async def test_close_on_the_loop_resolves_awaiting_tasks():
    gate = threading.Event()
    e = il.Engine()
    e.load(make_config(max_batch=1, delay_us=0), lambda d: (gate.wait(10), {"y": d["x"]})[1])
    tasks = [asyncio.ensure_future(e.infer_async("m", {"x": np.full((1, 4), i, np.float32)})) for i in range(10)]
    await asyncio.sleep(0.05)  # all submitted; the first holds the executor
    threading.Timer(0.05, gate.set).start()
    e.close()  # drains on this (the loop's) thread: the answers must still reach the tasks
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [int(r["y"][0, 0]) for r in results] == list(range(10))


def test_unknown_and_missing_names_reported_together(engine):
    cfg = il.ModelConfig(name="two", inputs=[("a", "float32", (-1, 2)), ("b", "float32", (-1, 2))],
                         outputs=[("y", "float32", (-1, 2))])
    engine.load(cfg, lambda d: {"y": d["a"] + d["b"]})
    with pytest.raises(il.errors.InvalidArgument,
                       match=r"model 'two' version 1: unknown input 'c'; input 'b': missing from the request "
                             r"\(inputs: a, b\)"):
        engine.infer("two", {"a": np.ones((1, 2), np.float32), "c": np.ones((1, 2), np.float32)})
    # an unknown name is refused even when every declared input is there
    with pytest.raises(il.errors.InvalidArgument, match=r"unknown input 'c'"):
        engine.infer("two", {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.float32),
                             "c": np.ones((1, 2), np.float32)})


@pytest.mark.parametrize("make", [
    lambda x: np.asfortranarray(x),                                   # Fortran order
    lambda x: np.repeat(x, 2, axis=1)[:, ::2],                        # strided view
    lambda x: x.tolist(),                                             # array-like: converted like np.asarray
])
def test_non_contiguous_and_array_likes_are_converted(engine, rng, make):
    engine.load(il.ModelConfig(name="m", inputs=[("x", "float64", (-1, 4))], outputs=[("y", "float64", (-1, 4))]),
                lambda d: {"y": d["x"] * 2})
    x = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(engine.infer("m", {"x": make(x)})["y"], x * 2)


def test_dtype_errors_use_numpy_names(engine):
    engine.load(make_config(), rowwise)
    with pytest.raises(il.errors.InvalidArgument, match=r"model 'm' version 1 input 'x': expected float32, got int64"):
        engine.infer("m", {"x": np.ones((1, 4), np.int64)})
    with pytest.raises(il.errors.InvalidArgument, match=r"input 'x': expected float32, got unsupported dtype complex128"):
        engine.infer("m", {"x": np.ones((1, 4), np.complex128)})
    with pytest.raises(il.errors.InvalidArgument, match=r"input 'x': expected float32, got unsupported dtype object"):
        engine.infer("m", {"x": object()})


def test_binding_raises_only_core_error():
    from inferline import _core
    e = _core.Engine()
    with pytest.raises(_core.CoreError) as info:
        e.unload("nope", 1)
    assert info.value.code == 5 and "model 'nope' version 1 is not loaded" in info.value.message
    assert not issubclass(_core.CoreError, il.errors.InferlineError)  # mapped by the Python engine
