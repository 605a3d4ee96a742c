"""inferline side by side with KServe's and Seldon MLServer's Python model servers: the same ONNX
model (digits-mlp's model.onnx, no preprocessing) with onnxruntime on the CPU (1 intra-op thread,
spinning off) in each, driven over the same protocol (KServe v2 gRPC, unary, single rows) by the
same load generator, interleaved (A B C A B C ...) in one run. One table at the end.

    python bench/compare_servers.py                       # about 6 min; first run installs venvs
    python bench/compare_servers.py --rounds 1 --seconds 2 --servers inferline,kserve   # quick

Per server and round (each server started fresh for its turn, alone on the machine with the
client): saturation (closed loop, --concurrency in flight), then an open loop at each of --rates
(the same absolute rates for every server) with p50/p99 and the server's CPU per request (/proc,
its process tree). The table gives medians over the rounds. The venvs (KServe, MLServer) are
made by this script under --cache-dir; see compare_servers_lib.py for each server's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import compare_servers_lib as lib

# The load generator: `inferline bench` (python/inferline/cli/bench.py). Set to "bench_grpc" to use
# bench/server/bench_grpc.py's closed/open loop instead (no sender-lag accounting, fixed request).
LOADGEN = "inferline-bench"
SERVERS = ("noop", "inferline", "kserve", "mlserver", "mlserver-inproc")
STREAM_SERVERS = ("noop-stream", "inferline-stream")
"""Also accepted by --servers: the no-op and inferline driven over ModelStreamInfer (KServe's and
MLServer's model servers do not serve it)."""


def demo_onnx(package: str, workdir: str) -> str:
    return os.path.join(package, "model.onnx")


def heavy_onnx(package: str, workdir: str) -> str:
    """make_mlp's MLP with digits-mlp's signature (pixels [N, 64] -> logits [N, 10], label [N, 1]),
    four hidden layers of 2048: about 1 ms a row alone on one core, about 0.17 ms a row in batches of 32."""
    import onnx
    from make_mlp import build_mlp

    path = os.path.join(workdir, "heavy-mlp.onnx")
    onnx.save(build_mlp((64, 2048, 2048, 2048, 2048, 10), input_name="pixels", output_name="logits",
                        label="label"), path)
    return path


MODELS = {"digits-mlp": demo_onnx, "heavy-mlp": heavy_onnx}


def inputs_npz(workdir: str, golden: str) -> str:
    path = os.path.join(workdir, "inputs.npz")
    np.savez(path, pixels=np.load(golden)["inputs/pixels"].astype(np.float32))
    return path


def measure(server, rate, args, npz) -> dict:
    """One run against `server`: closed loop if rate is None, else open loop at `rate` req/s."""
    if LOADGEN == "bench_grpc":
        from bench_grpc import load, process_cpu_s

        cpu0 = process_cpu_s(server.pid)
        r = load(server.grpc_port, "unary", args.procs or 2, args.concurrency // (args.procs or 2), rate, args.seconds)
        return {"rps": r["rps"], "p50": r["p50_ms"], "p99": r["p99_ms"], "errors": r["errors"],
                "server_cpu_us": (process_cpu_s(server.pid) - cpu0) / max(r["n"], 1) * 1e6, "client_cpu_us": None,
                "sender_lag_p99": None}
    cmd = [sys.executable, "-m", "inferline", "bench", lib.MODEL, "--url", f"127.0.0.1:{server.grpc_port}",
           "--duration", str(args.seconds), "--warmup", "1", "--inputs", npz, "--json", "--quiet",
           "--timeout", "10"]
    cmd += ["--concurrency", str(args.concurrency)] if rate is None else ["--rate", str(rate)]
    if server.name.endswith(lib.STREAM):
        cmd += ["--protocol", "stream"]
    if args.procs:
        cmd += ["--procs", str(args.procs)]
    cmd += ["--server-pid", str(server.pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 4 + 120)
    if out.returncode != 0:
        raise RuntimeError(f"inferline bench failed ({out.returncode}): {out.stderr[-2000:]}")
    rep = json.loads(out.stdout)
    return {"rps": rep["throughput_rps"], "p50": rep["latency_ms"]["p50"], "p99": rep["latency_ms"]["p99"],
            "errors": sum(rep["errors"].values()), "server_cpu_us": rep.get("server_cpu_us_per_request"),
            "client_cpu_us": rep.get("client_cpu_us_per_request"), "sender_lag_p99": (rep.get("sender_lag_ms") or {}).get("p99")}


def run_turn(name, args, workdir, model_path, pythons, ref, npz) -> dict:
    server = lib.start(name, workdir, model_path, pythons)
    try:
        lib.wait_ready(server, *ref)
        time.sleep(1.0)  # let start-up work settle
        row = {"sat": measure(server, None, args, npz)}
        for rate in args.rates:
            row[rate] = measure(server, rate, args, npz)
    finally:
        server.stop()
    line = " ".join(f"@{rate}: p50={row[rate]['p50']} p99={row[rate]['p99']} cpu_us={row[rate]['server_cpu_us']}"
                    for rate in args.rates)
    print(f"server={name} saturation_rps={row['sat']['rps']:.0f} errors={row['sat']['errors']} {line}", flush=True)
    return row


def med(rows, key, sub):
    vals = [r[key][sub] for r in rows if r[key][sub] is not None]
    return float(np.median(vals)) if vals else float("nan")


def table(results: dict, rates) -> list:
    lines = ["server            sat_rps (rounds)        " + "  ".join(f"@{r}/s p50/p99 ms" for r in rates)
             + "  " + "  ".join(f"cpu_us@{r}" for r in rates) + "  cpu_us@sat"]
    for name, rows in results.items():
        sats = "/".join(f"{r['sat']['rps']:.0f}" for r in rows)
        lat = "  ".join(f"{med(rows, r, 'p50'):>6.2f}/{med(rows, r, 'p99'):<8.2f}" for r in rates)
        cpu = "  ".join(f"{med(rows, r, 'server_cpu_us'):>9.0f}" for r in rates)
        lines.append(f"{name:<17} {med(rows, 'sat', 'rps'):>7.0f} ({sats:<13})  {lat}  {cpu}  "
                     f"{med(rows, 'sat', 'server_cpu_us'):>10.0f}")
    return lines


def targets(results: dict, rates) -> list:
    """The issue's ratio targets that this run can judge (light model, unary gRPC, bare .onnx)."""
    out = []
    sat = {n: med(rows, "sat", "rps") for n, rows in results.items()}
    mid = rates[len(rates) // 2]
    cpu = {n: med(rows, mid, "server_cpu_us") for n, rows in results.items()}

    def verdict(ok):
        return "met" if ok else "MISSED"
    if "inferline" in sat and "kserve" in sat:
        ratio = cpu["inferline"] / cpu["kserve"]
        out.append(f"server CPU per request at {mid}/s, inferline / kserve = {ratio:.2f} (target <= 0.6: "
                   f"{verdict(ratio <= 0.6)})")
    others = [sat[n] for n in ("kserve", "mlserver", "mlserver-inproc") if n in sat]
    if "inferline" in sat and others:
        ratio = sat["inferline"] / max(others)
        out.append(f"unary saturation, inferline / best of KServe and MLServer = {ratio:.2f} (target >= 1.6: "
                   f"{verdict(ratio >= 1.6)})")
    if "inferline" in sat and "noop" in sat:
        ratio = sat["inferline"] / sat["noop"]
        out.append(f"unary saturation, inferline (1 worker) / no-op grpc.aio = {ratio:.2f} (target >= 0.9: "
                   f"{verdict(ratio >= 0.9)})")
    if "inferline-stream" in sat and "kserve" in sat:
        ratio = sat["inferline-stream"] / sat["kserve"]
        out.append(f"streaming saturation, inferline / KServe unary = {ratio:.2f} (target >= 3: {verdict(ratio >= 3)})")
    if "inferline-stream" in sat and "noop-stream" in sat:
        ratio = sat["inferline-stream"] / sat["noop-stream"]
        out.append(f"streaming saturation, inferline / no-op grpc.aio streaming echo = {ratio:.2f} (target >= 0.8: "
                   f"{verdict(ratio >= 0.8)})")
    return out


def heavy_targets(results: dict, rates) -> list:
    """The issue's compute-heavy targets: throughput >= 3x KServe's, and a lower p99 than KServe's
    at every fixed rate that KServe sustains (answers within 5% of the rate, no errors, p99 within the
    design's 200 ms)."""
    out = []
    if "inferline" not in results or "kserve" not in results:
        return out
    ratio = med(results["inferline"], "sat", "rps") / med(results["kserve"], "sat", "rps")
    out.append(f"saturation, inferline / kserve = {ratio:.2f} (target >= 3: {'met' if ratio >= 3 else 'MISSED'})")
    for rate in rates:
        ks = results["kserve"]
        sustained = all(r[rate]["rps"] >= 0.95 * rate and not r[rate]["errors"] and r[rate]["p99"] <= 200
                        for r in ks)
        p99 = {n: med(results[n], rate, "p99") for n in ("inferline", "kserve")}
        if not sustained:
            out.append(f"@{rate}/s: KServe does not sustain it (not a common rate)")
            continue
        lower = p99["inferline"] < p99["kserve"]
        out.append(f"@{rate}/s p99: inferline {p99['inferline']:.2f} ms, kserve {p99['kserve']:.2f} ms "
                   f"(target lower: {'met' if lower else 'MISSED'})")
    return out


def plot(results: dict, rates, path: str, model: str = "digits-mlp") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    ax1.bar(names, [med(results[n], "sat", "rps") for n in names])
    ax1.set_ylabel("saturation, req/s (median of rounds)")
    ax1.tick_params(axis="x", rotation=20)
    for n in names:
        ax2.plot(rates, [med(results[n], r, "p99") for r in rates], marker="o", label=n)
    ax2.set_xlabel("offered rate, req/s (open loop)")
    ax2.set_ylabel("p99 latency, ms")
    ax2.set_yscale("log")
    ax2.legend()
    fig.suptitle(f"{model} model.onnx, unary gRPC, single rows (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help="comma-separated, of: " + ", ".join(SERVERS + STREAM_SERVERS))
    ap.add_argument("--rounds", type=int, default=2, help="interleaved turns per server (medians reported)")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    ap.add_argument("--rates", default="250,500,1000", help="open-loop rates, req/s, the same for every server")
    ap.add_argument("--concurrency", type=int, default=64, help="saturation: requests in flight")
    ap.add_argument("--procs", type=int, default=0, help="client processes (0: the load generator's choice)")
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "inferline-compare"))
    ap.add_argument("--kserve-python", help="use this python (with kserve, onnxruntime) instead of the cached venv")
    ap.add_argument("--mlserver-python", help="use this python (with mlserver, onnxruntime) instead of the cached venv")
    ap.add_argument("--model", choices=sorted(MODELS), default="digits-mlp",
                    help="digits-mlp (the demo's model.onnx: light, the servers' own cost sets the speed) or "
                         "heavy-mlp (64 -> 2048 x 4 -> 10, about 1 ms a row on one core: batching is the point; "
                         "inferline serves it from a package with max_queue_delay_us 0: batches form while "
                         "the executor computes, and a lone request does not wait)")
    ap.add_argument("--json", metavar="PATH", help="write every measurement here")
    ap.add_argument("--plot", metavar="PNG", help="saturation bars and p99 vs rate (needs matplotlib)")
    args = ap.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    names = args.servers.split(",")
    from inferline.demo_models import demo_package_path

    package = demo_package_path("digits-mlp")
    workdir = tempfile.mkdtemp(prefix="inferline-compare-")
    lib.MODEL = args.model
    if args.model == "heavy-mlp":  # Triton's default: a batch goes as soon as the executor is free
        lib.INFERLINE_BATCHING = {"max_batch_size": 32, "max_queue_delay_us": 0}
    model_path = MODELS[args.model](package, workdir)
    pythons, versions = {}, {"inferline": lib.versions(sys.executable, ["inferline", "onnxruntime", "grpcio"])}
    for venv_name, given in (("kserve", args.kserve_python), ("mlserver", args.mlserver_python)):
        if any(n.startswith(venv_name) for n in names):
            pythons[venv_name] = given or lib.ensure_venv(args.cache_dir, venv_name)
            versions[venv_name] = lib.versions(pythons[venv_name], lib.VERSIONS[venv_name])
    print("versions: " + json.dumps(versions), flush=True)
    ref = lib.reference(model_path, os.path.join(package, "golden.npz"))
    npz = inputs_npz(workdir, os.path.join(package, "golden.npz"))
    results = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:  # interleaved: every server once per round
            results[name].append(run_turn(name, args, workdir, model_path, pythons, ref, npz))
    print(f"\nmachine: {os.cpu_count()} CPUs, load generator {LOADGEN}; model {args.model}; medians of "
          f"{args.rounds} rounds")
    judged = targets(results, args.rates) if args.model == "digits-mlp" else heavy_targets(results, args.rates)
    for line in table(results, args.rates) + [""] + judged:
        print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"versions": versions, "rates": args.rates, "results": results}, f, indent=1, default=str)
    if args.plot:
        plot(results, args.rates, args.plot, args.model)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
