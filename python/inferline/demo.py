"""The demo: many concurrent callers push single rows through the engine.

The model is ``dense-demo``: an untrained MLP (64 -> 128 -> 10, fixed random
weights, NumPy) on 8x8 digit-like inputs, served with tabular preprocessing and
deadline-aware micro-batching. It is not the registry's trained ``digits-mlp``
(64 -> 64 -> 10, ONNX): the demo measures the engine, not a model, and the C++
example host reproduces it bit for bit. Prints throughput, latency percentiles
seen by the callers, and how full the batches were.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from .config import BatchingConfig, ModelConfig, TabularPreprocess
from .engine import Engine


def demo_weights(seed: int = 7):
    """(w1 [64, 128], w2 [128, 10]) float32: the demo MLP's fixed weights."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 128)).astype(np.float32) * np.float32(0.125)
    w2 = rng.standard_normal((128, 10)).astype(np.float32) * np.float32(0.09)
    return w1, w2


def dense_sequential(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [B, n] @ w [n, m] in float32 with an explicit arithmetic order: for each
    output, acc = x0*w0, then acc = acc + xi*wi for i = 1..n-1, every multiply and
    add rounded to float32 on its own (no FMA, no pairwise or blocked sums).
    A C++ loop in the same order with plain float ops (-ffp-contract=off) gives
    the same bits (csrc/examples/host/dense_mlp.cpp)."""
    acc = x[:, 0:1] * w[0]
    for i in range(1, w.shape[0]):
        acc = acc + x[:, i:i + 1] * w[i]
    return acc


def demo_model(seed: int = 7):
    """(config, backend) of the demo MLP: logits = relu(x @ w1) @ w2, each dense
    layer summed in a fixed order (dense_sequential) and relu(v) = v if v > 0
    else +0. Each row is computed on its own, so results are bitwise identical
    whatever batch a row rides in."""
    w1, w2 = demo_weights(seed)
    zero = np.float32(0)

    def mlp(inputs):
        x = inputs["pixels"]
        h = dense_sequential(x, w1)
        h = np.where(h > zero, h, zero)
        logits = dense_sequential(h, w2)
        return {"logits": logits, "label": np.argmax(logits, axis=1).astype(np.int64)[:, None]}

    config = ModelConfig(
        name="dense-demo",
        inputs=[("pixels", "float32", (-1, 64))],
        outputs=[("logits", "float32", (-1, 10)), ("label", "int64", (-1, 1))],
        batching=BatchingConfig(max_batch_size=32, max_queue_delay_us=2000),
        preprocessing={"pixels": TabularPreprocess(mean=(8.0,), std=(4.0,), nan_fill=0.0, clip_lo=-3.0, clip_hi=3.0)},
    )
    return config, mlp


async def _drive(handle, samples: np.ndarray, concurrency: int, seconds: float):
    latencies: list = []
    stop_at = time.perf_counter() + seconds

    async def caller(k: int):
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await handle.infer_async({"pixels": samples[i % len(samples)]})
            latencies.append(time.perf_counter() - t0)
            i += concurrency

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return latencies, time.perf_counter() - t0


def run_demo(concurrency: int = 256, seconds: float = 3.0) -> dict:
    config, mlp = demo_model()
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 17, size=(4096, 1, 64)).astype(np.float32)
    with Engine() as engine:
        handle = engine.load(config, mlp)
        latencies, elapsed = asyncio.run(_drive(handle, samples, concurrency, seconds))
        stats = handle.stats()
    lat_ms = np.sort(np.array(latencies)) * 1e3
    report = {
        "requests": len(latencies),
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "p999_ms": float(np.percentile(lat_ms, 99.9)),
        "mean_batch": stats["mean_batch_size"],
        "fill_ratio": stats["fill_ratio"],
    }
    print(f"inferline demo: {config.name} v{config.version}, {concurrency} concurrent asyncio callers, "
          f"single-row requests, {seconds:.0f} s")
    print(f"  throughput   {report['requests_per_s']:,.0f} requests/s ({report['requests']:,} requests)")
    print(f"  latency      p50 {report['p50_ms']:.2f} ms   p99 {report['p99_ms']:.2f} ms   "
          f"p99.9 {report['p999_ms']:.2f} ms")
    print(f"  batches      {stats['batches']:,} (mean {report['mean_batch']:.1f} rows, "
          f"fill {100 * report['fill_ratio']:.0f}% of {stats['max_batch_size']})")
    print(f"  core stats   queue p99 {stats['queue_us']['p99']} us, compute p99 {stats['compute_us']['p99']} us, "
          f"errors {stats['errors']}, rejected {stats['rejected']}")
    return report
