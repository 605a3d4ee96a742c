"""Engine benchmarks: the Python path's own overhead, and batching a compute-heavy model.

    pytest bench --benchmark-only -s

Each round is timed here (time.perf_counter) and the best round is reported,
because the machines these run on are shared and noisy; pytest-benchmark's
table shows the spread of the same rounds.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inferline import BatchingConfig, EchoBackend, ModelConfig, PythonBackend

FEATURES = 16
ASYNC_TARGET_REQ_PER_S = 50_000
MLP_RATIO_TARGET = 0.9


def echo_config(max_batch_size=32, max_queue_delay_us=100) -> ModelConfig:
    return ModelConfig(
        name="echo", inputs=[("x", "float32", (-1, FEATURES))], outputs=[("y", "float32", (-1, FEATURES))],
        batching=BatchingConfig(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us))


def rows(n: int, features: int, seed: int) -> list:
    """n distinct single-row float32 payloads [1, features]."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, features), dtype=np.float32) for _ in range(n)]


def run_rounds(benchmark, one_round, rounds: int, setup=None) -> list:
    """Runs one warm-up round, then `rounds` timed ones; returns one_round's results of the timed rounds."""
    if setup is not None:
        setup()
    one_round()
    results = []
    benchmark.pedantic(lambda: results.append(one_round()), setup=setup, rounds=rounds, iterations=1)
    return results


# ---- Python overhead with the native EchoBackend ----------------------------------

async def _async_echo_round(handle, payloads: list, per_caller: int) -> int:
    async def caller(x):
        inputs = {"x": x}
        for _ in range(per_caller):
            out = await handle.infer_async(inputs)
        assert np.array_equal(out["y"], x)

    await asyncio.gather(*(caller(x) for x in payloads))
    return per_caller * len(payloads)


@pytest.mark.parametrize("callers", [64, 512])
def test_infer_async_echo(benchmark, engine, loop, report, callers):
    handle = engine.load(echo_config(), EchoBackend())
    payloads = rows(callers, FEATURES, seed=callers)
    per_caller = 20_000 // callers

    def one_round():
        start = time.perf_counter()
        n = loop.run_until_complete(_async_echo_round(handle, payloads, per_caller))
        return n / (time.perf_counter() - start)

    rates = run_rounds(benchmark, one_round, rounds=5)
    best = max(rates)
    stats = handle.stats()
    benchmark.extra_info.update(req_per_s=best, mean_batch=stats["mean_batch_size"])
    verdict = "ok" if best >= ASYNC_TARGET_REQ_PER_S else f"MISSED by {1 - best / ASYNC_TARGET_REQ_PER_S:.0%}"
    report(f"infer_async_echo  callers={callers}  req_per_s={best:,.0f}  mean_batch={stats['mean_batch_size']:.1f}"
           f"  (target >= {ASYNC_TARGET_REQ_PER_S:,}: {verdict})")


def test_infer_blocking_echo_threads(benchmark, engine, report):
    threads, per_thread = 8, 2_000
    handle = engine.load(echo_config(), EchoBackend())
    payloads = rows(threads, FEATURES, seed=8)

    def caller(x):
        inputs = {"x": x}
        for _ in range(per_thread):
            out = handle.infer(inputs)
        assert np.array_equal(out["y"], x)

    def one_round():
        workers = [threading.Thread(target=caller, args=(x,)) for x in payloads]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return threads * per_thread / (time.perf_counter() - start)

    best = max(run_rounds(benchmark, one_round, rounds=5))
    stats = handle.stats()
    benchmark.extra_info.update(req_per_s=best, mean_batch=stats["mean_batch_size"])
    report(f"infer_blocking_echo  threads={threads}  req_per_s={best:,.0f}  mean_batch={stats['mean_batch_size']:.1f}")


# ---- compute-heavy: the MLP through onnxruntime --------------------------------------

MLP_BATCH = 32
MLP_DELAY_US = 5000


async def _async_mlp_round(handle, payloads: list, per_caller: int, latencies: list) -> int:
    async def caller(x):
        inputs = {"x": x}
        for _ in range(per_caller):
            t0 = time.perf_counter()
            await handle.infer_async(inputs)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller(x) for x in payloads))
    return per_caller * len(payloads)


@pytest.mark.parametrize("backend", ["python", "native"])
@pytest.mark.parametrize("callers", [64])
def test_mlp_onnxruntime(benchmark, engine, loop, report, mlp_path, callers, backend):
    """`python`: the session wrapped as a PythonBackend (one call into Python per batch);
    `native`: the onnxruntime backend as a package gets it (ONNX Runtime's C API from the core's
    executor, where built; the same session options: 1 intra-op thread, no spinning)."""
    ort = pytest.importorskip("onnxruntime")
    from inferline import _core
    from inferline.backends import BackendSpec, make_backend

    if backend == "native" and _core.NATIVE_ORT:
        pytest.skip(_core.NATIVE_ORT)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        options.add_session_config_entry(key, "0")
    sess = ort.InferenceSession(str(mlp_path), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).standard_normal((MLP_BATCH, 512), dtype=np.float32)
    batches_per_round = 100
    per_caller = batches_per_round * MLP_BATCH // callers

    def run(inputs):
        return {"y": sess.run(["y"], {"x": inputs["x"]})[0]}

    config = ModelConfig(
        name="mlp", inputs=[("x", "float32", (-1, 512))], outputs=[("y", "float32", (-1, 10))],
        batching=BatchingConfig(max_batch_size=MLP_BATCH, max_queue_delay_us=MLP_DELAY_US))
    handle = engine.load(config, PythonBackend(run) if backend == "python" else
                         make_backend(BackendSpec(threads=1, native=True), str(mlp_path)))
    payloads = rows(callers, 512, seed=1)
    # Bit-identical answers: each caller's row through the engine (in batches of whatever size
    # formed) equals the session's answer for all of them at once.
    async def all_rows():
        return await asyncio.gather(*(handle.infer_async({"x": x}) for x in payloads))

    together = loop.run_until_complete(all_rows())
    want = sess.run(["y"], {"x": np.concatenate(payloads)})[0]
    identical = all(np.array_equal(r["y"], want[i:i + 1]) for i, r in enumerate(together))

    # Backend alone, run before every engine round so both see the same machine load.
    batch_s: list = []

    def backend_alone():
        start = time.perf_counter()
        for _ in range(batches_per_round):
            sess.run(["y"], {"x": batch})
        batch_s.append((time.perf_counter() - start) / batches_per_round)

    latencies: list = []  # every timed caller's latency, all rounds pooled

    def one_round():
        start = time.perf_counter()
        n = loop.run_until_complete(_async_mlp_round(handle, payloads, per_caller, latencies))
        return n / (time.perf_counter() - start)

    engine_rows_s = max(run_rounds(benchmark, one_round, rounds=3, setup=backend_alone))
    batch_s = batch_s[1:]  # drop the warm-up's
    latencies = latencies[len(payloads) * per_caller:]
    p99_s = float(np.percentile(latencies, 99))
    alone_rows_s = MLP_BATCH / min(batch_s)
    ratio = engine_rows_s / alone_rows_s
    budget_s = MLP_DELAY_US * 1e-6 + 2 * float(np.median(batch_s))
    stats = handle.stats()
    compute = stats["compute_us"]
    benchmark.extra_info.update(engine_rows_per_s=engine_rows_s, backend_rows_per_s=alone_rows_s, ratio=ratio,
                                p99_ms=p99_s * 1e3, budget_ms=budget_s * 1e3, mean_batch=stats["mean_batch_size"])
    ratio_verdict = "ok" if ratio >= MLP_RATIO_TARGET else f"MISSED by {MLP_RATIO_TARGET - ratio:.2f}"
    p99_verdict = "ok" if p99_s <= budget_s else f"MISSED by {(p99_s - budget_s) * 1e3:.1f} ms"
    report(f"mlp_onnxruntime[{backend}]  callers={callers} max_batch={MLP_BATCH} delay_us={MLP_DELAY_US}  "
           f"bit_identical={identical}  "
           f"engine_rows_per_s={engine_rows_s:,.0f}  alone_rows_per_s={alone_rows_s:,.0f}  "
           f"ratio={ratio:.2f} ({ratio_verdict}, target >= {MLP_RATIO_TARGET})  "
           f"p99_ms={p99_s * 1e3:.1f}  budget_ms={budget_s * 1e3:.1f} ({p99_verdict}; "
           f"= delay + 2 x {np.median(batch_s) * 1e3:.1f} ms batch alone)  "
           f"engine_compute_ms p50={compute['p50'] / 1e3:.1f} p99={compute['p99'] / 1e3:.1f}  "
           f"mean_batch={stats['mean_batch_size']:.1f}")
