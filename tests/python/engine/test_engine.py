"""Engine API: blocking, futures, asyncio; many callers batched together."""

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

import inferline as il
from helpers import make_config, rowwise


def test_infer_returns_named_outputs(engine, rng):
    engine.load(make_config(), rowwise)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y = engine.infer("m", {"x": x})
    assert set(y) == {"y"}
    np.testing.assert_array_equal(y["y"], rowwise({"x": x})["y"])


def test_single_input_model_accepts_bare_array_and_lists(engine):
    engine.load(make_config(), rowwise)
    y = engine.infer("m", [[1.0, 2.0, 3.0, 4.0]] and np.array([[1, 2, 3, 4]], np.float32))
    assert y["y"].shape == (1, 4)
    # a non-contiguous array is made contiguous rather than refused
    x = np.arange(8, dtype=np.float32).reshape(4, 2).T.copy(order="F")
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(engine.infer("m", {"x": x})["y"], rowwise({"x": np.ascontiguousarray(x)})["y"])


def test_submit_returns_future(engine, rng):
    engine.load(make_config(), rowwise)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(100)]
    futures = [engine.submit("m", {"x": x}) for x in xs]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    for x, f in zip(xs, futures):
        np.testing.assert_array_equal(f.result(timeout=10)["y"], rowwise({"x": x})["y"])


async def test_infer_async_many_tasks_are_batched(engine, rng):
    handle = engine.load(make_config(max_batch=32, delay_us=20000), rowwise)
    xs = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(512)]
    results = await asyncio.gather(*(engine.infer_async("m", {"x": x}) for x in xs))
    for x, r in zip(xs, results):
        np.testing.assert_array_equal(r["y"], rowwise({"x": x})["y"])
    s = handle.stats()
    assert s["requests"] == 512 and s["rows"] == 512
    assert s["mean_batch_size"] > 8, s["batch_size_counts"]  # thousands of callers share batches


def test_many_threads_concurrently(engine):
    engine.load(make_config(), rowwise)
    errors = []

    def worker(seed):
        r = np.random.default_rng(seed)
        for _ in range(200):
            x = r.standard_normal((int(r.integers(1, 4)), 4)).astype(np.float32)
            y = engine.infer("m", {"x": x})["y"]
            if not np.array_equal(y, rowwise({"x": x})["y"]):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


async def test_asyncio_and_threads_together(engine, rng):
    engine.load(make_config(), rowwise)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        blocking = [loop.run_in_executor(pool, engine.infer, "m", {"x": x}) for _ in range(50)]
        awaited = [engine.infer_async("m", {"x": x}) for _ in range(50)]
        out = await asyncio.gather(*blocking, *awaited)
    expected = rowwise({"x": x})["y"]
    assert all(np.array_equal(o["y"], expected) for o in out)


def test_outputs_survive_engine_close(rng):
    with il.Engine() as e:
        e.load(make_config(), rowwise)
        x = rng.standard_normal((5, 4)).astype(np.float32)
        y = e.infer("m", {"x": x})["y"]
    np.testing.assert_array_equal(y, rowwise({"x": x})["y"])


def test_multi_output_and_int_dtypes(engine):
    cfg = il.ModelConfig(name="multi", inputs=[("a", "int64", (-1, 3)), ("b", "float64", (-1, 1))],
                         outputs=[("s", "int64", (-1, 1)), ("p", "float64", (-1, 3))])
    engine.load(cfg, lambda d: {"s": d["a"].sum(axis=1, keepdims=True), "p": d["a"] * d["b"]})
    a = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    b = np.array([[0.5], [2.0]])
    y = engine.infer("multi", {"a": a, "b": b})
    np.testing.assert_array_equal(y["s"], [[6], [15]])
    np.testing.assert_array_equal(y["p"], a * b)
    assert y["s"].dtype == np.int64 and y["p"].dtype == np.float64


def test_versions_and_unload(engine):
    engine.load(make_config(version=1), lambda d: {"y": d["x"] + 1})
    engine.load(make_config(version=2), lambda d: {"y": d["x"] + 2})
    x = np.zeros((1, 4), np.float32)
    assert engine.infer("m", {"x": x})["y"][0, 0] == 2  # latest by default
    assert engine.infer("m", {"x": x}, version=1)["y"][0, 0] == 1
    assert engine.models() == [("m", 1), ("m", 2)]
    engine.unload("m", 2)
    assert engine.infer("m", {"x": x})["y"][0, 0] == 1
    with pytest.raises(il.errors.ModelNotFound, match="version 2 is not loaded"):
        engine.infer("m", {"x": x}, version=2)
    with pytest.raises(il.errors.ModelNotFound, match="'nope' is not loaded"):
        engine.infer("nope", {"x": x})


def test_priority_and_timeout_accepted(engine):
    engine.load(make_config(), rowwise)
    x = np.ones((1, 4), np.float32)
    assert engine.infer("m", {"x": x}, priority=1, timeout_us=5_000_000)["y"].shape == (1, 4)
    assert engine.infer("m", {"x": x}, priority=99)["y"].shape == (1, 4)  # clamped to the top level


def test_oversize_request_split_and_reassembled(engine, rng):
    handle = engine.load(make_config(max_batch=8), rowwise)
    x = rng.standard_normal((37, 4)).astype(np.float32)
    np.testing.assert_array_equal(engine.infer("m", {"x": x})["y"], rowwise({"x": x})["y"])
    assert max(i for i, c in enumerate(handle.stats()["batch_size_counts"]) if c) <= 8


def test_stats_shape(engine):
    handle = engine.load(make_config(), rowwise)
    for _ in range(10):
        engine.infer("m", {"x": np.ones((2, 4), np.float32)})
    s = handle.stats()
    assert s["requests"] == 10 and s["rows"] == 20 and s["errors"] == 0
    assert s["end_to_end_us"]["count"] == 10
    assert s["end_to_end_us"]["p50"] <= s["end_to_end_us"]["p99"] <= s["end_to_end_us"]["max"]
    assert sum(s["batch_size_counts"]) == s["batches"]
    assert 0 < s["fill_ratio"] <= 1


# ---- one rule for a loaded version: load refuses, replace swaps ----------------

def test_load_refuses_a_loaded_version_and_replace_swaps_it(engine):
    x = np.zeros((1, 4), np.float32)
    handle = engine.load(make_config(version=1), lambda d: {"y": d["x"] + 1})
    with pytest.raises(il.errors.AlreadyExists, match="model 'm' version 1 is already loaded"):
        engine.load(make_config(version=1), lambda d: {"y": d["x"] + 5})
    assert engine.infer("m", {"x": x})["y"][0, 0] == 1  # the refused load changed nothing

    swapped = engine.replace(make_config(version=1, max_batch=4), lambda d: {"y": d["x"] + 10})
    assert engine.models() == [("m", 1)]
    assert engine.infer("m", {"x": x})["y"][0, 0] == 10
    assert handle.infer({"x": x})["y"][0, 0] == 10  # a handle names the version, not the old model
    assert swapped.config.batching.max_batch_size == 4
    assert engine.model("m", 1).config.batching.max_batch_size == 4
    assert handle.stats()["requests"] == 2  # the new model's counters

    engine.replace(make_config(version=2), lambda d: {"y": d["x"] + 20})  # not loaded: loaded
    assert engine.models() == [("m", 1), ("m", 2)]


def test_replace_refusals_keep_the_loaded_version(engine):
    x = np.zeros((1, 4), np.float32)
    engine.load(make_config(), lambda d: {"y": d["x"] + 1})
    other = il.ModelConfig(name="m", inputs=[("x", "float32", (-1, 5))], outputs=[("y", "float32", (-1, 5))])
    with pytest.raises(il.errors.FailedPrecondition, match="model 'm' version 1: the replacement's inputs differ"):
        engine.replace(other, lambda d: {"y": d["x"]})
    with pytest.raises(il.errors.InvalidArgument, match="preferred_batch_sizes"):
        engine.replace(make_config(batching=il.BatchingConfig(max_batch_size=8, preferred_batch_sizes=(16,))),
                       rowwise)
    assert engine.infer("m", {"x": x})["y"][0, 0] == 1


def test_replace_drains_the_old_model_while_the_new_one_serves(engine):
    gate = threading.Event()
    old = engine.load(make_config(max_batch=1, delay_us=0), lambda d: (gate.wait(10), {"y": d["x"] + 1})[1])
    queued = [old.submit({"x": np.full((1, 4), i, np.float32)}) for i in range(5)]
    swap = threading.Thread(target=engine.replace, args=(make_config(), lambda d: {"y": d["x"] + 100}))
    swap.start()
    try:
        # The old model is held at the gate; the new one answers at once.
        deadline = time.monotonic() + 10
        while engine.model("m", 1).config.batching.max_batch_size != 32:  # published?
            assert time.monotonic() < deadline, "the replacement was never published"
            time.sleep(0.001)
        assert engine.infer("m", {"x": np.zeros((1, 4), np.float32)})["y"][0, 0] == 100
        assert not any(f.done() for f in queued[1:])
    finally:
        gate.set()
        swap.join(10)
    assert [int(f.result(timeout=10)["y"][0, 0]) for f in queued] == [1, 2, 3, 4, 5]  # drained, computed


def test_concurrent_infers_during_replaces_are_never_refused(engine):
    engine.load(make_config(), lambda d: {"y": d["x"] + 1})
    stop = threading.Event()
    errors, seen = [], set()

    def worker(seed):
        r = np.random.default_rng(seed)
        while not stop.is_set():
            x = r.standard_normal((1, 4)).astype(np.float32)
            try:
                y = engine.infer("m", {"x": x}, version=1 if seed % 2 else None)["y"]
            except il.errors.InferlineError as e:
                errors.append(e)
                return
            seen.add(int(np.rint(y - x)[0, 0]))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(2, 12):
            engine.replace(make_config(), lambda d, k=k: {"y": d["x"] + k})
            time.sleep(0.005)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert seen <= set(range(1, 12)) and len(seen) > 1


def test_unloaded_version_handle_raises_not_found(engine):
    handle = engine.load(make_config(), rowwise)
    engine.unload("m")
    with pytest.raises(il.errors.ModelNotFound, match="model 'm' version 1 is not loaded"):
        handle.infer({"x": np.ones((1, 4), np.float32)})
    with pytest.raises(il.errors.ModelNotFound):
        handle.stats()
    with pytest.raises(il.errors.ModelNotFound, match="'m' is not loaded"):
        engine.unload("m")


def test_closed_engine_refuses_with_unavailable():
    e = il.Engine()
    e.load(make_config(), rowwise)
    e.close()
    e.close()  # idempotent
    assert e.models() == []
    with pytest.raises(il.errors.Unavailable, match="engine is shut down"):
        e.load(make_config(name="n"), rowwise)
    with pytest.raises(il.errors.Unavailable):
        e.replace(make_config(), rowwise)
