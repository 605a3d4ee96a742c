"""The six measurements of bench_engine.py. Each section(ctx) emits table rows through ctx.row and
runs in its own process (bench_engine.py), so a crash or a hang costs that section only.

Ratios are against a baseline measured in the same run: the model alone (section 1) for the engine's
throughput, the same client against a trivial CPU model for the client's own ceiling, the small
model alone for the noisy neighbour.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from inferline import Engine, PythonBackend

import engine_load as L

MiB = 1 << 20


@dataclass
class Ctx:
    args: Any                     # bench_engine.py's parsed flags
    torch: Any
    device: Any                   # torch.device of the model-alone runs
    engine_device: str            # BackendSpec.device: "cuda:0" or "cpu"
    models: dict                  # "heavy" / "small" / "bitwise" -> (path, sizes)
    values: dict                  # numbers handed on between sections (section 1's baseline)
    row: Callable[..., None]      # row(section, what, value, vs=, ratio=, target=, result=, note=, data=)
    progress: Callable[[str], None]
    engines: list = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def engine(self) -> Engine:
        e = Engine()
        self.engines.append(e)
        return e

    def close(self) -> None:
        """Closes this section's engines and gives their GPU memory back."""
        while self.engines:
            self.engines.pop().close()
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def _verdict(ok: bool, text: str = "") -> str:
    return "ok" if ok else f"MISSED{' ' + text if text else ''}"


def _cfg(ctx: Ctx, name: str, model: str, max_batch: int, delay_us: int, isolation: Optional[str] = None):
    sizes = ctx.models[model][1]
    return L.config(name, sizes[0], sizes[-1], max_batch, delay_us, ctx.args.instances, isolation)


def _graph_modes(ctx: Ctx, wanted: list) -> list:
    """The cuda_graphs modes to compare, or [None] (the backend's default) where there are none."""
    if ctx.cuda and "cuda_graphs" in L.spec_fields():
        return wanted
    return [None]


def _mode_name(mode: Optional[str]) -> str:
    return "default" if mode is None else mode


def _alone(ctx: Ctx, model: str, batch: int, graph: bool = False, module=None) -> float:
    """rows/s of `model` alone in torch at `batch` (eager, or replaying a CUDA graph)."""
    torch, a = ctx.torch, ctx.args
    path, sizes = ctx.models[model]
    module = module if module is not None else torch.jit.load(path, map_location=ctx.device).eval()
    with torch.inference_mode():
        x = torch.randn(batch, sizes[0], device=ctx.device)
        fn = L.graphed(torch, module, x) if graph else (lambda: module(x))
        one = L.time_call(torch, fn, ctx.device, iters=1)
        iters = int(min(2000, max(3, a.alone_seconds / max(one, 1e-6))))
        return batch / L.time_call(torch, fn, ctx.device, iters=iters, warmup=1)


# ---- 1. the model alone ---------------------------------------------------------------------
def model_alone(ctx: Ctx) -> None:
    torch, a = ctx.torch, ctx.args
    module = torch.jit.load(ctx.models["heavy"][0], map_location=ctx.device).eval()
    for batch in (1, a.max_batch):
        eager = _alone(ctx, "heavy", batch, module=module)
        ctx.values[f"alone_b{batch}"] = eager
        ctx.row("1 model alone", f"heavy b={batch} eager", f"{eager:,.0f} rows/s",
                note=f"{batch / eager * 1e3:.3f} ms/batch", data={"rows_per_s": eager})
        if not ctx.cuda:
            ctx.row("1 model alone", f"heavy b={batch} CUDA graph", "n/a", note="no CUDA graphs on the CPU")
            continue
        try:
            graph = _alone(ctx, "heavy", batch, graph=True, module=module)
        except Exception as e:  # the eager rows stand
            ctx.row("1 model alone", f"heavy b={batch} CUDA graph", "FAIL", result="FAIL",
                    note=f"{type(e).__name__}: {str(e).strip()[:200]}")
            continue
        ctx.row("1 model alone", f"heavy b={batch} CUDA graph", f"{graph:,.0f} rows/s", vs="eager",
                ratio=graph / eager, note=f"{batch / graph * 1e3:.3f} ms/batch; ratio = launch overhead saved",
                data={"rows_per_s": graph})
    ctx.progress(f"b=1 {ctx.values['alone_b1']:,.0f} rows/s, b={a.max_batch} "
                 f"{ctx.values[f'alone_b{a.max_batch}']:,.0f} rows/s")


# ---- 2. the engine, single-row requests ------------------------------------------------------
def engine_throughput(ctx: Ctx) -> None:
    a = ctx.args
    sizes = ctx.models["heavy"][1]
    base = ctx.values.get(f"alone_b{a.max_batch}")
    if base is None:
        ctx.progress("no baseline from section 1: measuring the model alone here")
        base = _alone(ctx, "heavy", a.max_batch)
    rows = L.payloads(512, sizes[0], seed=2)
    client = dict(threads=a.client_threads, tasks=a.client_tasks, chunk=a.client_chunk)

    # The client's own ceiling: the same config and client against a model that returns zeros.
    e = ctx.engine()
    zeros = PythonBackend(lambda inputs: [np.zeros((inputs["x"].shape[0], sizes[-1]), np.float32)])
    h = e.load(_cfg(ctx, "client_ceiling", "heavy", a.max_batch, a.delay_us), zeros)
    L.closed_loop(h, rows, a.warmup_s / 2, **client)
    ceiling = L.closed_loop(h, rows, a.client_seconds, **client)
    ctx.close()
    ctx.progress(f"client ceiling {ceiling['rps']:,.0f} req/s (mean batch {ceiling['mean_batch']:.1f})")

    e = ctx.engine()
    factory = L.backend(ctx.models["heavy"][0], ctx.engine_device)
    h = e.load(_cfg(ctx, "heavy", "heavy", a.max_batch, a.delay_us), factory)
    L.warm_buckets(h, sizes[0], a.max_batch)
    L.closed_loop(h, rows, a.warmup_s, **client)
    sat = L.closed_loop(h, rows, a.seconds, **client)
    ratio = sat["rps"] / base
    ctx.progress(f"engine {sat['rps']:,.0f} req/s = {ratio:.2f} x alone; mean batch {sat['mean_batch']:.1f}")
    ctx.row("2 engine", f"throughput, single rows ({sat['in_flight']} in flight)", f"{sat['rps']:,.0f} req/s",
            vs=f"alone b={a.max_batch}: {base:,.0f} rows/s", ratio=ratio, target=">= 0.85",
            result=_verdict(ratio >= 0.85), note=f"errors {sat['errors']}", data=sat)
    ctx.row("2 engine", "mean batch size", f"{sat['mean_batch']:.1f}", target=f"max {a.max_batch}")
    limited = ceiling["rps"] < 1.2 * sat["rps"]
    ctx.row("2 engine", "client ceiling (zeros model on CPU, same config)", f"{ceiling['rps']:,.0f} req/s",
            vs="engine throughput", ratio=ceiling["rps"] / sat["rps"],
            result="CLIENT-BOUND?" if limited else "not the limit", data=ceiling,
            note="under 1.2x the engine: the client may have capped the throughput" if limited else "")

    # At 80% the batches are smaller than at saturation: their sizes' graphs are captured in a
    # warm-up at that rate (not counted), so that the measured run replays only.
    rate = 0.8 * sat["rps"]
    L.open_loop(h, rows, rate, a.warmup_s, threads=a.sender_threads, warmup_s=a.warmup_s)
    before = L.counters(factory, h)
    for share in (0.8, 0.5):
        lat = L.open_loop(h, rows, share * sat["rps"], a.latency_seconds, threads=a.sender_threads,
                          warmup_s=a.warmup_s / 2)
        ctx.row("2 engine", f"p99 at {share:.0%} of it ({share * sat['rps']:,.0f} req/s, open loop)",
                f"{lat['p99_ms']:.2f} ms", target="< 20 ms" if share == 0.8 else "",
                result=_verdict(lat["p99_ms"] < 20) if share == 0.8 else "",
                note=f"p50 {lat['p50_ms']:.2f} ms, max {lat['max_ms']:.1f} ms, sender lag p99 "
                     f"{lat['lag_p99_ms']:.2f} ms, errors {lat['errors']}, n {lat['counted']}", data=lat)
    after = L.counters(factory, h)
    if before and after and "graphs_captured" in after:
        ctx.row("2 engine", "graphs captured while p99 was measured",
                str(after["graphs_captured"] - before.get("graphs_captured", 0)))
    found = L.counters(factory, h)
    if found:
        ctx.row("2 engine", "backend graph counters", L.show(found))


# ---- 3. CUDA-graph launch overhead, batch 1 ----------------------------------------------------
def graph_overhead(ctx: Ctx) -> None:
    a = ctx.args
    sizes = ctx.models["small"][1]
    rows = L.payloads(256, sizes[0], seed=3)
    if ctx.cuda:
        eager, graph = _alone(ctx, "small", 1), _alone(ctx, "small", 1, graph=True)
        ctx.row("3 graphs b=1", "small alone, eager vs CUDA graph", f"{eager:,.0f} / {graph:,.0f} rows/s",
                ratio=graph / eager, note="torch alone: the most graphs can save")
    results = {}
    for mode in _graph_modes(ctx, ["off", "buckets"]):
        e = ctx.engine()
        factory = L.backend(ctx.models["small"][0], ctx.engine_device, mode)
        h = e.load(_cfg(ctx, f"small_{_mode_name(mode)}", "small", 1, 0), factory)
        L.closed_loop(h, rows, a.warmup_s / 2, threads=2, tasks=4, chunk=16)
        h.reset_stats()  # idle here: the closed loop has answered everything
        r = L.closed_loop(h, rows, a.small_seconds, threads=2, tasks=4, chunk=16)
        r["compute_us"] = h.stats()["compute_us"]["mean"]
        r["counters"] = L.counters(factory, h)
        results[mode] = r
        ctx.close()
        ctx.progress(f"b=1 cuda_graphs={_mode_name(mode)}: {r['rps']:,.0f} batches/s, "
                     f"compute {r['compute_us']:.0f} us/batch")
    off = results.get("off")
    for mode, r in results.items():
        vs = "off" if off is not None and mode != "off" else ""
        ctx.row("3 graphs b=1", f"engine cuda_graphs={_mode_name(mode)}", f"{r['rps']:,.0f} batches/s",
                vs=vs, ratio=r["rps"] / off["rps"] if vs else None, data=r,
                note=f"compute {r['compute_us']:.0f} us/batch (stats: gather+run+scatter)"
                     + (f"; {L.show(r['counters'])}" if r["counters"] else ""))
    if list(results) == [None]:
        ctx.row("3 graphs b=1", "cuda_graphs off vs buckets", "n/a",
                note="CPU run" if not ctx.cuda else "BackendSpec has no cuda_graphs")


# ---- 4. bitwise: a row alone vs inside batches -------------------------------------------------
def _placements(rng, n: int, max_batch: int, reps: int) -> list:
    """[(batch size, {position: row index})]: each batch holds distinct rows at random positions."""
    out = []
    for size in [s for s in (2, 3, 5, 8, 16, 33, 64, 100, 255) if s < max_batch] + [max_batch]:
        for _ in range(reps):
            k = min(size, n)
            out.append((size, dict(zip(rng.choice(size, k, replace=False).tolist(),
                                       rng.choice(n, k, replace=False).tolist()))))
    return out


def bitwise(ctx: Ctx) -> None:
    torch, a = ctx.torch, ctx.args
    path, sizes = ctx.models["bitwise"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((a.bitwise_rows, sizes[0]), dtype=np.float32)
    filler = rng.standard_normal((a.max_batch, sizes[0]), dtype=np.float32)
    cpu = torch.jit.load(path, map_location="cpu").eval()
    with torch.inference_mode():
        cpu_ref = np.stack([cpu(torch.from_numpy(x[i:i + 1])).numpy()[0] for i in range(len(x))])
    plan = _placements(rng, len(x), a.max_batch, reps=2)
    for mode in _graph_modes(ctx, ["fixed", "buckets", "off"]):
        e = ctx.engine()
        h = e.load(_cfg(ctx, f"bitwise_{_mode_name(mode)}", "bitwise", a.max_batch, 0),
                   L.backend(path, ctx.engine_device, mode))
        alone = np.stack([L.infer_rows(h, x[i:i + 1])[0] for i in range(len(x))])
        same = np.ones(len(x), bool)
        for size, where in plan:
            batch = filler[:size].copy()
            for pos, i in where.items():
                batch[pos] = x[i]
            out = L.infer_rows(h, batch)
            for pos, i in where.items():
                same[i] &= out[pos].tobytes() == alone[i].tobytes()
        ctx.close()
        k, n = int(same.sum()), len(x)
        diff = float(np.max(np.abs(alone - cpu_ref)))
        expect = mode == "fixed"  # CPU torch is not batch-invariant either (MKL picks kernels by rows)
        ctx.row("4 bitwise", f"cuda_graphs={_mode_name(mode)}: alone vs in batches", f"identical {k}/{n}",
                target=f"{n}/{n}" if expect else "", result=_verdict(k == n) if expect else "",
                note=f"{len(plan)} batches of 2..{a.max_batch} rows; vs CPU torch max |diff| {diff:.3g}",
                data={"identical": k, "rows": n, "max_abs_diff_vs_cpu": diff})
        ctx.progress(f"bitwise {_mode_name(mode)}: identical {k}/{n}, vs CPU {diff:.3g}")


# ---- 5. noisy neighbour ------------------------------------------------------------------------
def noisy_neighbour(ctx: Ctx) -> None:
    a = ctx.args
    heavy_rows = L.payloads(512, ctx.models["heavy"][1][0], seed=5)
    small_rows = L.payloads(256, ctx.models["small"][1][0], seed=6)
    iso = {"shared": "shared", "isolated": "isolated"}
    if not ctx.cuda or "gpu" not in L.config_fields():
        iso = {"shared": None, "isolated": None}
    e = ctx.engine()
    heavy = e.load(_cfg(ctx, "heavy", "heavy", a.max_batch, a.delay_us), L.backend(ctx.models["heavy"][0],
                                                                                  ctx.engine_device))
    small = {k: e.load(_cfg(ctx, f"small_{k}", "small", a.small_batch, a.small_delay_us, v),
                       L.backend(ctx.models["small"][0], ctx.engine_device)) for k, v in iso.items()}

    def p99(handle):
        return L.open_loop(handle, small_rows, a.noisy_rate, a.noisy_seconds, threads=1, warmup_s=a.warmup_s / 2)

    L.warm_buckets(heavy, ctx.models["heavy"][1][0], a.max_batch)
    for h in small.values():
        L.warm_buckets(h, ctx.models["small"][1][0], a.small_batch)
        L.closed_loop(h, small_rows, a.warmup_s / 2, threads=1, tasks=2, chunk=8)
    alone = p99(small["shared"])
    ctx.progress(f"small alone p99 {alone['p99_ms']:.2f} ms")
    stop, box = threading.Event(), {}
    bg = threading.Thread(target=lambda: box.update(L.closed_loop(
        heavy, heavy_rows, 3 * a.noisy_seconds + 4 * a.warmup_s, threads=a.client_threads, tasks=a.client_tasks,
        chunk=a.client_chunk, stop=stop)), daemon=True)
    bg.start()
    time.sleep(a.warmup_s)
    try:
        shared = p99(small["shared"])
        isolated = p99(small["isolated"])
    finally:
        stop.set()
        bg.join(timeout=60)
    note = "" if iso["shared"] else "no gpu.isolation here: both small models are the same config"
    for name, r in (("alone", alone), ("beside saturated heavy, shared", shared),
                    ("beside saturated heavy, isolated", isolated)):
        ctx.row("5 noisy neighbour", f"small p99 {name} ({a.noisy_rate:,.0f} req/s)", f"{r['p99_ms']:.2f} ms",
                vs="alone" if r is not alone else "", ratio=r["p99_ms"] / alone["p99_ms"] if r is not alone else None,
                note=f"p50 {r['p50_ms']:.2f} ms, max {r['max_ms']:.1f} ms, errors {r['errors']}, n {r['counted']}"
                     + (f"; {note}" if note and r is not alone else ""), data=r)
    ctx.row("5 noisy neighbour", "heavy meanwhile (closed loop)", f"{box.get('rps', float('nan')):,.0f} req/s",
            note=f"mean batch {box.get('mean_batch', float('nan')):.1f}", data=box)
    ctx.close()
    _noisy_processes(ctx, heavy_rows)


def _probe(ctx: Ctx) -> dict:
    """small_probe.py in a process of its own: the small model's open-loop latency there."""
    a = ctx.args
    path, sizes = ctx.models["small"]
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "small_probe.py"), ctx.engine_device, path, str(sizes[0]), str(sizes[-1]),
           str(a.small_batch), str(a.small_delay_us), str(a.instances), str(a.noisy_rate), str(a.noisy_seconds),
           str(a.warmup_s)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": here +
                         os.pathsep + os.environ.get("PYTHONPATH", "")})
    if out.returncode != 0:
        raise RuntimeError(f"small_probe.py exited {out.returncode}: {out.stderr.strip()[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _noisy_processes(ctx: Ctx, heavy_rows: list) -> None:
    """The same question with the small model in its own process (own interpreter and GIL; the
    GPU shared by time-slicing, or by MPS where its daemon runs): alone, then beside the heavy
    model saturated in this process."""
    a = ctx.args
    alone = _probe(ctx)
    e = ctx.engine()
    heavy = e.load(_cfg(ctx, "heavy", "heavy", a.max_batch, a.delay_us), L.backend(ctx.models["heavy"][0],
                                                                                  ctx.engine_device))
    L.warm_buckets(heavy, ctx.models["heavy"][1][0], a.max_batch)
    stop, box = threading.Event(), {}
    bg = threading.Thread(target=lambda: box.update(L.closed_loop(
        heavy, heavy_rows, 60, threads=a.client_threads, tasks=a.client_tasks, chunk=a.client_chunk, stop=stop)),
        daemon=True)
    bg.start()
    time.sleep(a.warmup_s)
    try:
        beside = _probe(ctx)
    finally:
        stop.set()
        bg.join(timeout=60)
    mps = "under MPS" if os.environ.get("CUDA_MPS_PIPE_DIRECTORY") else "no MPS daemon (time-sliced)"
    for name, r in (("own process, alone", alone), ("own process, beside saturated heavy", beside)):
        ctx.row("5 noisy neighbour", f"small p99 {name} ({a.noisy_rate:,.0f} req/s)", f"{r['p99_ms']:.2f} ms",
                vs="own process, alone" if r is beside else "",
                ratio=r["p99_ms"] / alone["p99_ms"] if r is beside else None,
                note=f"p50 {r['p50_ms']:.2f} ms, max {r['max_ms']:.1f} ms, errors {r['errors']}, n {r['counted']}; {mps}",
                data=r)
    ctx.row("5 noisy neighbour", "heavy meanwhile (closed loop, other process)",
            f"{box.get('rps', float('nan')):,.0f} req/s", note=f"mean batch {box.get('mean_batch', float('nan')):.1f}")


# ---- 6. GPU memory -----------------------------------------------------------------------------
def gpu_memory(ctx: Ctx) -> None:
    torch, a = ctx.torch, ctx.args
    e = ctx.engine()
    loaded = []
    for model in ("heavy", "small"):
        path, sizes = ctx.models[model]
        h = e.load(_cfg(ctx, model, model, a.max_batch, a.delay_us), L.backend(path, ctx.engine_device))
        h.infer({"x": np.zeros((1, sizes[0]), np.float32)})
        loaded.append((model, h, L.weight_bytes(sizes)))
    for model, h, weights in loaded:
        mem = L.gpu_memory(e, h)
        value = "n/a" if mem is None else (f"device {mem.get('device')}: buffers {mem.get('device_bytes', 0) / MiB:,.1f} "
                                           f"MiB, pinned {mem.get('pinned_bytes', 0) / MiB:,.1f} MiB")
        charged = (mem or {}).get("charged_bytes")
        note = f"weights {weights / MiB:,.0f} MiB (not in gpu_memory(): torch holds them)"
        note += "" if charged is None else f"; charged {charged / MiB:,.0f} MiB"
        ctx.row("6 GPU memory", f"{model} gpu_memory() ({a.instances} instances)", value,
                note=note if mem is not None else "no gpu_memory() here",
                data={"gpu_memory": mem, "weight_bytes": weights})
    if ctx.cuda:
        free, total = torch.cuda.mem_get_info(ctx.device)
        ctx.row("6 GPU memory", "torch's view", f"allocated {torch.cuda.memory_allocated(ctx.device) / MiB:,.0f} MiB",
                note=f"reserved {torch.cuda.memory_reserved(ctx.device) / MiB:,.0f} MiB; device used "
                     f"{(total - free) / MiB:,.0f} of {total / MiB:,.0f} MiB (all processes)",
                data={"allocated": torch.cuda.memory_allocated(ctx.device),
                      "reserved": torch.cuda.memory_reserved(ctx.device), "used": total - free, "total": total})
    else:
        ctx.row("6 GPU memory", "torch's view", "n/a", note="CPU run")


SECTIONS = {"alone": model_alone, "engine": engine_throughput, "graphs": graph_overhead, "bitwise": bitwise,
            "noisy": noisy_neighbour, "memory": gpu_memory}
