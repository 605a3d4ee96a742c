"""Latency regression suite, in-process: one blocking request per benchmark iteration through the
engine with a real ONNX Runtime backend, loaded as `inferline serve` loads a package.

    pytest bench/test_bench_latency.py bench/test_bench_server.py --benchmark-only

Models (fixtures in conftest.py):
  - digits-mlp, the shipped demo package (64 -> 256 -> 256 -> 10, tabular preprocessing);
  - mlp, bench/make_mlp.py's 512 -> 2048 x 3 -> 10 MLP pushed as a bare .onnx (serving defaults),
    about a millisecond per row on one core: the compute-heavy case.

Each is loaded twice: with `max_queue_delay_us` 0 (a lone request is dispatched at once, so the
time is the request path plus compute) and with its own batching window (a lone request waits
for the window: the scheduler must not wait longer). Single-row and batch-32 requests. For
digits-mlp the callers and the engine's threads run on one CPU (conftest.py's `pin_to_one_cpu`),
which keeps cross-core wake-ups, the noisiest part of a 30 us request on a shared machine, out of
the time; the heavy model runs unpinned (pinned, a neighbour on that CPU would halve it).
pytest-benchmark calibrates the iterations and reports seconds per request; compare a run with
a saved baseline as bench/README.md says (`--benchmark-compare`, `--benchmark-compare-fail`).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

ROWS = {"row": 1, "batch32": 32}


def _pin_light(request, model: str) -> None:
    if model == "digits-mlp":  # see the module docstring
        request.getfixturevalue("pin_to_one_cpu")


@pytest.mark.parametrize("rows", list(ROWS))
@pytest.mark.parametrize("model", ["digits-mlp", "mlp"])
@pytest.mark.parametrize("window", ["nowait", "window"])
def test_engine_infer(benchmark, request, engine_models, model, rows, window):
    """One blocking `ModelHandle.infer` per iteration, nothing else in flight."""
    _pin_light(request, model)
    handle, cases = engine_models[(model, window)]
    inputs, want = cases(ROWS[rows], seed=ROWS[rows])
    got = handle.infer(inputs)  # also the warm-up
    for key, value in want.items():  # golden answers, or the runtime's own
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-4)
    benchmark.group = f"engine {model} {window}"
    benchmark.extra_info.update(rows=ROWS[rows], batching=str(handle.config.batching))
    benchmark(handle.infer, inputs)


@pytest.mark.parametrize("model", ["digits-mlp", "mlp"])
def test_engine_concurrent_rows(benchmark, request, engine_models, model):
    """64 asyncio callers, 8 single-row requests each, per round: the batched path under load.
    Time per round / 512 is the cost per request at saturation."""
    _pin_light(request, model)
    handle, cases = engine_models[(model, "window")]
    payloads = [cases(1, seed=i)[0] for i in range(64)]
    loop = asyncio.new_event_loop()

    async def caller(inputs):
        for _ in range(8):
            await handle.infer_async(inputs)

    async def one_round():
        await asyncio.gather(*(caller(x) for x in payloads))

    try:
        loop.run_until_complete(one_round())  # warm-up
        benchmark.group = f"engine {model} concurrent"
        benchmark.extra_info.update(requests_per_round=512)
        benchmark.pedantic(lambda: loop.run_until_complete(one_round()), rounds=10 if model == "mlp" else 30,
                           iterations=1)
    finally:
        loop.close()
    stats = handle.stats()
    benchmark.extra_info.update(mean_batch=stats["mean_batch_size"], req_per_s=512 / benchmark.stats.stats.median)


def test_backend_alone_batch32(benchmark, mlp_path):
    """The heavy MLP in its own onnxruntime session (1 intra-op thread, spinning off, as the serving
    defaults), batch 32: the reference the engine rows above are read against."""
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(mlp_path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(32).standard_normal((32, 512), dtype=np.float32)
    sess.run(None, {"x": x})
    benchmark.group = "engine mlp window"
    benchmark(sess.run, None, {"x": x})
