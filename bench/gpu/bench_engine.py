"""The engine on a GPU, against torch alone in the same run (issue 17, item 5).

    python bench/gpu/bench_engine.py                    # on the H200: about 2-3 minutes
    python bench/gpu/bench_engine.py --device cpu --quick   # dry run of the same code on CPU torch

Sections, each in its own process with its own time limit (a crash or a hang costs that section
a FAIL row; the rest go on):
  1 alone    the heavy MLP (default 512 -> 8192 x 12 hidden (ReLU) -> 10, float32, seeded) timed in
             torch on the device at batch 1 and max batch (CUDA events), eager and as a CUDA graph
  2 engine   the same model served by inferline's Engine on cuda:0 (max batch 128, instances 2; at 256
             a batch takes 8 ms on the H200 and two in flight put p50 at 21 ms: results/):
             single-row requests from a closed-loop asyncio client (threads x tasks x chunk in flight)
             -> throughput / alone max-batch (target >= 0.85), mean batch; the client's own ceiling
             (same config, zeros model on CPU); p99 at 80% of the engine's throughput, open loop,
             latency from the scheduled send time (target < 20 ms)
  3 graphs   a small model (512 -> 1024 -> 10) at batch 1: cuda_graphs off vs buckets
  4 bitwise  seeded rows alone vs inside batches of 2..max rows at random positions, per
             cuda_graphs mode: rows identical bit for bit; max |diff| vs CPU torch
  5 noisy    the small model's p99 at a modest open-loop rate alone, then beside the heavy model
             saturated by a closed loop, gpu.isolation shared vs isolated
  6 memory   gpu_memory() of the loaded versions and torch's view
Settings the installed inferline lacks (cuda_graphs, the gpu section) give "n/a" rows. Progress
lines carry the elapsed time; one markdown table comes last, also written to $OUT/engine_table.md
(when OUT is set) and, with --json, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import engine_load as L

# torch 2.9+ marks TorchScript deprecated; it is the format the torchscript backend serves.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)

START = float(os.environ.get("BENCH_ENGINE_START") or time.time())  # children count from the parent's start
ORDER = ("alone", "engine", "graphs", "bitwise", "noisy", "memory")
# Seconds each section may take at most (the H200 needs about half with the default durations);
# a section gets what --total-s leaves when that is less.
BUDGET_S = {"alone": 45, "engine": 90, "graphs": 45, "bitwise": 45, "noisy": 110, "memory": 35}


def progress(text: str) -> None:
    print(f"[{time.time() - START:6.1f}s] {text}", flush=True)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--quick", action="store_true", help="tiny models, short runs")
    p.add_argument("--sections", default=",".join(ORDER), help=f"comma-separated, of {', '.join(ORDER)}")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--total-s", type=float, default=270, help="time limit of the whole run")
    size = p.add_argument_group("models (default: heavy 512 -> 8192 x 12 -> 10; tiny with --quick or on CPU)")
    for flag in ("in-features", "hidden", "layers", "out-features", "small-hidden", "bitwise-hidden",
                 "bitwise-layers"):
        size.add_argument(f"--{flag}", type=int)
    eng = p.add_argument_group("engine")
    eng.add_argument("--max-batch", type=int)
    eng.add_argument("--delay-us", type=int, default=1000, help="max_queue_delay_us of the heavy model")
    eng.add_argument("--instances", type=int, default=2)
    eng.add_argument("--small-batch", type=int, default=32)
    eng.add_argument("--small-delay-us", type=int, default=100)
    load = p.add_argument_group("load and durations (seconds)")
    load.add_argument("--client-threads", type=int, default=4)
    load.add_argument("--client-tasks", type=int, default=4)
    load.add_argument("--client-chunk", type=int, default=64)
    load.add_argument("--sender-threads", type=int, default=2)
    load.add_argument("--switch-interval-ms", type=float, default=None,
                      help="sys.setswitchinterval in every section's process (Python's default: 5 ms)")
    load.add_argument("--no-gc", action="store_true", help="gc.disable() in every section's process")
    load.add_argument("--noisy-rate", type=float, default=500.0)
    load.add_argument("--bitwise-rows", type=int, default=32)
    for flag, full in (("warmup-s", 2.0), ("seconds", 6.0), ("client-seconds", 3.0), ("latency-seconds", 6.0),
                       ("small-seconds", 4.0), ("noisy-seconds", 6.0), ("alone-seconds", 1.0)):
        load.add_argument(f"--{flag}", type=float, default=full)
    p.add_argument("--section", help=argparse.SUPPRESS)      # child: run this section
    p.add_argument("--model-dir", help=argparse.SUPPRESS)    # child: where the parent saved the models
    p.add_argument("--values", help=argparse.SUPPRESS)       # child: numbers from earlier sections (JSON)
    p.add_argument("--result", help=argparse.SUPPRESS)       # child: where to write its rows (JSON)
    a = p.parse_args(argv)
    tiny = a.quick or a.device == "cpu"
    defaults = dict(in_features=512, out_features=10, hidden=64 if tiny else 8192, layers=2 if tiny else 12,
                    small_hidden=64 if tiny else 1024, bitwise_hidden=64 if tiny else 2048,
                    bitwise_layers=2 if tiny else 4, max_batch=32 if tiny else 128)
    if tiny:
        a.in_features = a.in_features or 32
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.quick:
        for k in ("warmup_s", "seconds", "client_seconds", "latency_seconds", "small_seconds", "noisy_seconds",
                  "alone_seconds"):
            setattr(a, k, min(getattr(a, k), 1.0 if k != "alone_seconds" else 0.2))
        a.client_chunk = min(a.client_chunk, 16)
    return a


def models(a) -> dict:
    return {"heavy": L.mlp_sizes(a.in_features, a.hidden, a.layers, a.out_features),
            "small": L.mlp_sizes(a.in_features, a.small_hidden, 1, a.out_features),
            "bitwise": L.mlp_sizes(a.in_features, a.bitwise_hidden, a.bitwise_layers, a.out_features)}


# ---- child: one section ---------------------------------------------------------------------
TITLES = {"alone": "1 model alone", "engine": "2 engine", "graphs": "3 graphs b=1", "bitwise": "4 bitwise",
          "noisy": "5 noisy neighbour", "memory": "6 GPU memory"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def run_section(a) -> int:
    rows, values = [], {}
    if a.values:
        with open(a.values) as f:
            values = json.load(f)

    def save():
        with open(a.result + ".tmp", "w") as f:
            json.dump({"rows": rows, "values": values}, f, default=str)
        os.replace(a.result + ".tmp", a.result)

    def row(section, what, value, vs="", ratio=None, target="", result="", note="", data=None):
        rows.append(dict(section=section, what=what, value=value, vs=vs, ratio=ratio, target=target,
                         result=result, note=note, data=data or {}))
        save()

    ctx, rc = None, 0
    if a.switch_interval_ms is not None:
        sys.setswitchinterval(a.switch_interval_ms / 1000)
    if a.no_gc:
        import gc
        gc.disable()
    try:
        import torch

        import engine_sections as S
        device = torch.device("cuda:0" if a.device == "cuda" else "cpu")
        if a.device == "cpu":
            from inferline.backends.spec import serving_threads
            torch.set_num_threads(serving_threads())  # as the engine's torchscript backend does
        paths = {k: (os.path.join(a.model_dir, f"{k}.pt"), s) for k, s in models(a).items()}
        ctx = S.Ctx(args=a, torch=torch, device=device, engine_device=str(device), models=paths, values=values,
                    row=row, progress=lambda text: progress(f"{a.section}: {text}"))
        S.SECTIONS[a.section](ctx)
    except L.Unsupported as e:
        row(TITLES[a.section], "n/a", str(e))
    except Exception as e:
        traceback.print_exc()
        row(TITLES[a.section], "FAIL", _first_line(e), result="FAIL")
        rc = 1
    finally:
        if ctx is not None:
            try:
                ctx.close()
            except Exception as e:
                row(TITLES[a.section], "FAIL (closing the engines)", _first_line(e), result="FAIL")
                rc = 1
    save()
    return rc


# ---- parent: prepare, run the sections, print the table ----------------------------------------
def environment(a) -> dict:
    import torch

    import inferline
    from inferline import _core
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "inferline": inferline.__version__,
           "cuda_available": torch.cuda.is_available()}
    if a.device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    status = getattr(_core, "cuda_status", None)
    env["core_cuda_status"] = status() if status is not None else "no _core.cuda_status (CPU-only core)"
    env["cuda_graphs_setting"] = "cuda_graphs" in L.spec_fields()
    env["gpu_section"] = "gpu" in L.config_fields()
    return env


def prepare(a, folder: str) -> None:
    """Saves the three seeded MLPs where the sections load them."""
    import torch
    device = "cuda" if a.device == "cuda" else "cpu"
    for seed, (name, sizes) in enumerate(models(a).items()):
        L.save_mlp(torch, sizes, os.path.join(folder, f"{name}.pt"), seed, device)
        progress(f"saved {name} {' -> '.join(map(str, sizes))} ({L.weight_bytes(sizes) / 2**20:,.1f} MiB)")
    if device == "cuda":
        torch.cuda.empty_cache()


def run_child(a, name: str, folder: str, values: dict, argv: list) -> list:
    """Runs one section in a child process within its time limit; its rows (and a FAIL row when it
    crashed or ran out of time). Updates `values` with the numbers it hands on."""
    remaining = a.total_s - (time.time() - START) - 5
    limit = min(BUDGET_S[name], remaining)
    if limit < 10:
        return [dict(section=TITLES[name], what="SKIP", value=f"no time left ({remaining:.0f} s)", result="SKIP")]
    vals, result = os.path.join(folder, f"{name}.values.json"), os.path.join(folder, f"{name}.rows.json")
    with open(vals, "w") as f:
        json.dump(values, f)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--section", name, "--model-dir", folder,
           "--values", vals, "--result", result]
    progress(f"== section {TITLES[name]} (limit {limit:.0f} s)")
    failure = None
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_ENGINE_START": str(START)}
        rc = subprocess.run(cmd, timeout=limit, env=env).returncode
        if rc < 0:
            failure = f"crashed: signal {-rc}"
        elif rc not in (0, 1):
            failure = f"exit status {rc}"
    except subprocess.TimeoutExpired:
        failure = f"timed out after {limit:.0f} s"
    rows = []
    if os.path.exists(result):
        with open(result) as f:
            got = json.load(f)
        rows, _ = got["rows"], values.update(got["values"])
    if failure or not rows:
        rows.append(dict(section=TITLES[name], what="FAIL", value=failure or "no rows", result="FAIL"))
    return rows


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def table(rows: list) -> str:
    head = ["section", "measure", "value", "baseline (same run)", "ratio", "target", "result", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r.get("ratio")
        cells = [r["section"], r["what"], r["value"], r.get("vs", ""),
                 "" if ratio is None else f"{ratio:.2f}x", r.get("target", ""), r.get("result", ""), r.get("note", "")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.section:
        return run_section(a)
    env = environment(a)
    progress("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in ORDER]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(ORDER)})")
    rows, values = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as folder:
        try:
            prepare(a, folder)
        except Exception as e:
            traceback.print_exc()
            rows.append(dict(section="0 setup", what="FAIL (building the models)", value=_first_line(e),
                             result="FAIL"))
            sections = []
        for name in sections:
            rows += run_child(a, name, folder, values, argv)
    text = table(rows)
    progress(f"done; sizes heavy {' -> '.join(map(str, models(a)['heavy']))}, device {a.device}")
    print("\n" + text, flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "engine_table.md"), "w") as f:
            f.write(text + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "args": {k: v for k, v in vars(a).items()}, "rows": rows}, f, indent=1,
                      default=str)
    return 1 if any(r.get("result") == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
