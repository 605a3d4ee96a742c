"""`inferline bench` next to bench_grpc.py's own client, against the same `inferline serve`, in one run.

    python bench/server/loadgen_agreement.py [--seconds 5] [--rounds 2] [--procs 2] [--concurrency 64]

For each mode (unary, stream), alternately (A B A B), a closed loop of --concurrency requests in
flight from --procs client processes: bench_grpc.load() (its client) and inferline.loadgen's
run_bench() (the client of `inferline bench`). For each it reads the server's CPU time (/proc,
over the same window) and, for inferline bench, the client processes' own CPU time. One line per
run, then per mode: the median throughput of each and their ratio (agreement), and inferline
bench's client CPU per request as a share of the server's (the issue's target: at most 0.5).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_grpc import load, start_inferline  # noqa: E402

from inferline.loadgen import BenchConfig, Target, run_bench  # noqa: E402
from inferline.loadgen.procstat import process_cpu_s  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--modes", default="unary,stream")
    args = ap.parse_args()
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push

    repo = tempfile.mkdtemp(prefix="inferline-agreement-")
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))
    registry.close()
    proc, port = start_inferline(1, repo)
    rows = []
    try:
        for mode in args.modes.split(","):
            for _ in range(args.rounds):
                cpu0 = process_cpu_s(proc.pid)
                r = load(port, mode, args.procs, args.concurrency // args.procs, None, args.seconds)
                server_us = (process_cpu_s(proc.pid) - cpu0) / max(r["n"], 1) * 1e6  # includes spawn/ramp
                rows.append({"mode": mode, "client": "bench_grpc", "rps": r["rps"], "server_us": server_us,
                             "client_us": None, "p50": r["p50_ms"], "p99": r["p99_ms"]})
                protocol = "grpc" if mode == "unary" else "stream"
                rep = run_bench(BenchConfig(Target(f"127.0.0.1:{port}", protocol, "digits-mlp"),
                                            concurrency=args.concurrency, procs=args.procs, warmup_s=1.0,
                                            duration_s=args.seconds, server_pid=proc.pid, progress=False))
                rows.append({"mode": mode, "client": "inferline-bench", "rps": rep["throughput_rps"],
                             "server_us": rep["server_cpu_us_per_request"],
                             "client_us": rep["client_cpu_us_per_request"], "p50": rep["latency_ms"]["p50"],
                             "p99": rep["latency_ms"]["p99"]})
                for row in rows[-2:]:
                    client = "-" if row["client_us"] is None else f"{row['client_us']:.0f}"
                    print(f"mode={mode} client={row['client']} rps={row['rps']:.0f} p50_ms={row['p50']:.2f} "
                          f"p99_ms={row['p99']:.2f} server_cpu_us_per_req={row['server_us']:.0f} "
                          f"client_cpu_us_per_req={client}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print()
    for mode in args.modes.split(","):
        med = {c: statistics.median(r["rps"] for r in rows if r["mode"] == mode and r["client"] == c)
               for c in ("bench_grpc", "inferline-bench")}
        ours = [r for r in rows if r["mode"] == mode and r["client"] == "inferline-bench"]
        share = statistics.median(r["client_us"] / r["server_us"] for r in ours)
        print(f"{mode}: throughput inferline bench {med['inferline-bench']:.0f} req/s, bench_grpc client "
              f"{med['bench_grpc']:.0f} req/s, ratio {med['inferline-bench'] / med['bench_grpc']:.3f}; "
              f"inferline bench client CPU per request {statistics.median(r['client_us'] for r in ours):.0f} us "
              f"= {share:.2f}x the server's {statistics.median(r['server_us'] for r in ours):.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
