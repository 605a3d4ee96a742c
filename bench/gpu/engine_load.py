"""Helpers of bench_engine.py: the MLPs, configs that use the GPU fields where they exist, the model
timed alone, and the load generators (closed loop for throughput, open loop for latency).

The GPU-specific settings (``BackendSpec.cuda_graphs``, ``ModelConfig.gpu``) are used only when the
installed inferline has them; asking for one it lacks raises ``Unsupported``, which the sections
report as "n/a" instead of failing. The client side is asyncio: ``ModelHandle.submit_on_loop`` is the
engine's cheapest public submit path (no task, no thread hop; about 240k req/s of single rows on one
core of the development machine against 100k for ``submit`` futures from threads).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from typing import Optional, Sequence

import numpy as np

from inferline import ModelConfig
from inferline.backends import BackendSpec, make_backend


class Unsupported(Exception):
    """The installed inferline has no such setting (yet)."""


# ---- models ---------------------------------------------------------------------------
def mlp_sizes(n_in: int, hidden: int, layers: int, n_out: int) -> list:
    """[n_in, hidden x layers, n_out]: `layers` hidden ReLU layers."""
    return [n_in] + [hidden] * layers + [n_out]


def weight_bytes(sizes: Sequence[int]) -> int:
    return 4 * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def save_mlp(torch, sizes: Sequence[int], path: str, seed: int, device: str) -> None:
    """A seeded float32 MLP (Linear + ReLU between layers), scripted and saved with torch.jit.save.
    Built on `device` (initialising 3 GB of weights on a GPU takes a fraction of the CPU's time)."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, device=device))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    module = torch.jit.script(torch.nn.Sequential(*layers).eval())
    torch.jit.save(module, path)
    del module, layers


def spec_fields() -> set:
    return {f.name for f in dataclasses.fields(BackendSpec)}


def config_fields() -> set:
    return {f.name for f in dataclasses.fields(ModelConfig)}


def backend(path: str, device: str, cuda_graphs: Optional[str] = None):
    """The torchscript backend factory of `path` on `device`; cuda_graphs None = the default."""
    kw = {"name": "torchscript", "device": device}
    if cuda_graphs is not None:
        if "cuda_graphs" not in spec_fields():
            raise Unsupported("BackendSpec has no cuda_graphs")
        kw["cuda_graphs"] = cuda_graphs
    return make_backend(BackendSpec(**kw), path)


def config(name: str, n_in: int, n_out: int, max_batch: int, delay_us: int, instances: int,
           isolation: Optional[str] = None) -> ModelConfig:
    d = {"name": name, "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, n_in]}],
         "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, n_out]}],
         "batching": {"max_batch_size": max_batch, "max_queue_delay_us": delay_us},
         "instances": instances, "queue_capacity": 1 << 16}
    if isolation is not None:
        if "gpu" not in config_fields():
            raise Unsupported("ModelConfig has no gpu section")
        d["gpu"] = {"isolation": isolation}
    return ModelConfig.from_dict(d)


def payloads(n: int, n_in: int, seed: int) -> list:
    """n distinct single-row requests {"x": float32 [1, n_in]}."""
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, n_in), dtype=np.float32)} for _ in range(n)]


def counters(factory, handle) -> dict:
    """The CUDA-graph counters the backend exposes: the torchscript backend's ``cuda_graph_stats()``
    (mode, graphs_captured, graph_replays, eager_runs, capture_failures; {} off a GPU); for another
    backend, what ``stats()`` of it or of a runner it holds, its attributes and the model's stats
    name like graph/replay/eager/capture."""
    named = getattr(factory, "cuda_graph_stats", None)  # the torchscript backend's (mode and counts)
    if callable(named):
        try:
            return dict(named())
        except Exception:
            return {}
    keys = ("graph", "replay", "eager", "capture")
    found = {}
    objects = [factory] + [getattr(factory, n, None) for n in dir(factory) if "runner" in n.lower()]
    for obj in objects:
        if obj is None:
            continue
        try:
            stats = obj.stats() if callable(getattr(obj, "stats", None)) else {}
            found.update({k: v for k, v in dict(stats).items() if any(s in k.lower() for s in keys)})
        except Exception:
            pass
        for name in dir(obj):
            if name.startswith("_") or not any(k in name.lower() for k in keys):
                continue
            try:
                value = getattr(obj, name)
                value = value() if callable(value) else value
            except Exception:
                continue
            if isinstance(value, (int, float)) or (isinstance(value, dict) and value):
                found[name] = value
    try:
        found.update({k: v for k, v in handle.stats().items() if any(s in k.lower() for s in keys)})
    except Exception:
        pass
    return found


def show(found: dict) -> str:
    """Counters as "name=value, ..." (nested dicts flattened one level)."""
    flat = {}
    for k, v in found.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[k] = v
    return ", ".join(f"{k}={v}" for k, v in flat.items())


def warm_buckets(handle, n_in: int, max_batch: int, rounds: int = 3) -> None:
    """Requests of 1, 2, 4, ... max_batch rows, each size `rounds` times one after another, so that
    lazily captured per-size CUDA graphs exist before anything is timed."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    for rows in sizes + [max_batch]:
        x = np.zeros((rows, n_in), np.float32)
        for _ in range(rounds):
            handle.infer({"x": x})


def gpu_memory(engine, handle) -> Optional[dict]:
    """The version's ``gpu_memory()`` (on the handle or the core's model), None where neither has it."""
    for obj in (handle, engine._core_model(handle.name, handle.version)):
        fn = getattr(obj, "gpu_memory", None)
        if fn is not None:
            return dict(fn())
    return None


# ---- the model alone -------------------------------------------------------------------
def time_call(torch, fn, device, iters: int, warmup: int = 3) -> float:
    """Seconds per fn() call: CUDA events around `iters` back-to-back calls on a GPU (after
    torch.cuda.synchronize), perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - start) / iters
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / 1e3 / iters


def graphed(torch, module, x):
    """fn() replaying a CUDA graph of module(x) on a static x (captured after side-stream warm-up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(x)
    return graph.replay


# ---- load generators -------------------------------------------------------------------
def _in_threads(n: int, target) -> list:
    """Runs target(i) -> result in n threads; the results in order (an exception is re-raised)."""
    results: list = [None] * n

    def run(i):
        try:
            results[i] = target(i)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def closed_loop(handle, rows: list, seconds: float, threads: int = 4, tasks: int = 4, chunk: int = 64,
                stop: Optional[threading.Event] = None) -> dict:
    """Saturation: `threads` asyncio loops, each with `tasks` tasks that submit `chunk` single-row
    requests and await them all, over and over (threads x tasks x chunk in flight) for `seconds`
    or until `stop` is set. Returns req/s (answered), errors, and the model's rows/batches in the
    window (from its stats)."""
    before = handle.stats()
    deadline = time.perf_counter() + seconds

    def loop_thread(i):
        async def task(k):
            ok = errors = 0
            j = (i * tasks + k) * chunk
            while time.perf_counter() < deadline and not (stop is not None and stop.is_set()):
                futs = []
                for _ in range(chunk):
                    j += 1
                    try:
                        futs.append(handle.submit_on_loop(rows[j % len(rows)]))
                    except Exception:
                        errors += 1
                for r in await asyncio.gather(*futs, return_exceptions=True):
                    if isinstance(r, BaseException):
                        errors += 1
                    else:
                        ok += 1
            return ok, errors

        async def main():
            return await asyncio.gather(*(task(k) for k in range(tasks)))

        return asyncio.run(main())

    start = time.perf_counter()
    per_thread = _in_threads(threads, loop_thread)
    elapsed = time.perf_counter() - start
    after = handle.stats()
    ok = sum(o for t in per_thread for o, _ in t)
    errors = sum(e for t in per_thread for _, e in t)
    batches = after["batches"] - before["batches"]
    return {"rps": ok / elapsed, "ok": ok, "errors": errors, "seconds": elapsed,
            "mean_batch": (after["rows"] - before["rows"]) / batches if batches else 0.0,
            "in_flight": threads * tasks * chunk}


def open_loop(handle, rows: list, rate: float, seconds: float, threads: int = 2, warmup_s: float = 0.5,
              tick_s: float = 0.0005) -> dict:
    """Latency at a fixed offered rate: `threads` asyncio loops, each sending single-row requests
    at rate/threads on a fixed schedule whatever the answers do (open loop). A request's latency
    runs from its scheduled send time to its answer, so a sender that falls behind shows as
    latency (and as client lag: actual - scheduled send time). Requests scheduled in the first
    warmup_s are not counted."""
    t0 = time.perf_counter() + 0.05
    end = t0 + seconds

    def loop_thread(k):
        lat, lag, errors = [], [], [0]

        # Only the futures still unanswered are held: keeping every answered one (and its
        # outputs) alive to the end grows the heap by ~100k objects a run, and Python's cyclic
        # collector then stops the process for ~100 ms at a time (measured on the H200: the
        # sender's lag p99 97 ms with them kept, 2.7 ms with the collector off).
        outstanding: set = set()

        def done(sched, fut):
            outstanding.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                errors[0] += 1
            elif sched >= t0 + warmup_s:
                lat.append(time.perf_counter() - sched)

        async def main():
            i = 0
            while True:
                now = time.perf_counter()
                if now >= end:
                    break
                while True:
                    sched = t0 + (i * threads + k) / rate
                    if sched > now:
                        break
                    i += 1
                    try:
                        fut = handle.submit_on_loop(rows[(i * threads + k) % len(rows)])
                    except Exception:
                        errors[0] += 1
                        continue
                    if sched >= t0 + warmup_s:
                        lag.append(time.perf_counter() - sched)
                    outstanding.add(fut)
                    fut.add_done_callback(functools.partial(done, sched))
                await asyncio.sleep(tick_s)
            if outstanding:
                await asyncio.wait(list(outstanding), timeout=30)
            return i

        sent = asyncio.run(main())
        return sent, lat, lag, errors[0]

    per_thread = _in_threads(threads, loop_thread)
    lat = np.array([x for _, t, _, _ in per_thread for x in t]) * 1e3
    lag = np.array([x for _, _, t, _ in per_thread for x in t]) * 1e3
    counted = len(lat)

    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else float("nan")

    return {"rate": rate, "sent": sum(s for s, _, _, _ in per_thread), "counted": counted,
            "errors": sum(e for _, _, _, e in per_thread), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "max_ms": float(lat.max()) if counted else float("nan"), "lag_p99_ms": pct(lag, 99)}


def infer_rows(handle, x: np.ndarray) -> np.ndarray:
    """One request of x's rows, answered as one batch when nothing else is queued."""
    return np.array(handle.infer({"x": np.ascontiguousarray(x)})["y"], copy=True)
