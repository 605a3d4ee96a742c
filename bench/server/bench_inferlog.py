"""What the inference log costs a server: logging at 1% (and scraped every second) vs both off, same run.

    python bench/server/bench_inferlog.py [--seconds 5] [--rounds 4] [--modes unary,stream]

Three `inferline serve` configurations over digits-mlp (its default logging.sample_rate, 1%),
alternately, ``--rounds`` times each: "off" (--inference-log off), "log-1%" (the log on, writing
every second and sampling the hardware every second: a busier log than the defaults of 60 s and
10 s), and "log-1%+scrape" (the same, with /metrics read every second). For each: saturation
(closed loop), then one open-loop rate for all (``--rate-fraction`` of the first "off" saturation) over which the
server's CPU time is read from /proc: CPU microseconds per request. One line per run, then the
medians and their ratios to "off" (bench_grpc.py's client and CPU reading).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_grpc import Scraper, free_port, load, process_cpu_s  # noqa: E402

CONFIGS = ("off", "log-1%", "log-1%+scrape")


def start(repo: str, logs: str, config: str):
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    log = ["--inference-log", "off"] if config == "off" else \
        ["--inference-log", logs, "--inference-log-flush", "1", "--hardware-log-interval", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "inferline", "serve", "--repository", repo, "--http-port",
                             str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics), *log],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "models ready" in line:
            break
    return proc, grpc_port, metrics


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--modes", default="unary", help="comma-separated: unary, stream")
    ap.add_argument("--rate-fraction", type=float, default=0.4,
                    help="the open-loop rate, as a fraction of the first 'off' saturation (default 0.4: at 0.6 "
                         "this 2-core machine, clients included, refuses some requests)")
    args = ap.parse_args()
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push

    repo = tempfile.mkdtemp(prefix="inferline-bench-")
    logs = tempfile.mkdtemp(prefix="inferline-bench-logs-")
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))
    registry.close()
    rows, fixed = [], {}
    try:
        for _ in range(args.rounds):
            for config in CONFIGS:
                proc, port, metrics = start(repo, logs, config)
                scraper = Scraper(metrics) if config.endswith("scrape") else None
                try:
                    for mode in args.modes.split(","):
                        sat = load(port, mode, args.procs, 64, None, args.seconds)
                        fixed.setdefault(mode, args.rate_fraction * sat["rps"])
                        cpu0 = process_cpu_s(proc.pid)
                        at = load(port, mode, args.procs, 64, fixed[mode], args.seconds)
                        cpu_us = (process_cpu_s(proc.pid) - cpu0) / max(at["n"], 1) * 1e6
                        rows.append({"config": config, "mode": mode, "sat": sat["rps"], "cpu_us": cpu_us})
                        print(f"config={config} mode={mode} saturation_rps={sat['rps']:.0f} errors={sat['errors']} "
                              f"at={fixed[mode]:.0f}rps: n={at['n']} errors={at['errors']} p50_ms={at['p50_ms']:.2f} "
                              f"p99_ms={at['p99_ms']:.2f} server_cpu_us_per_request={cpu_us:.0f}", flush=True)
                finally:
                    if scraper is not None:
                        scraper.stop()
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
        files = sum(len(fs) for _, _, fs in os.walk(logs))
        print(f"\nlog files written: {files}")
        for mode in args.modes.split(","):
            cpu = {c: float(np.median([r["cpu_us"] for r in rows if r["config"] == c and r["mode"] == mode]))
                   for c in CONFIGS}
            sat = {c: float(np.median([r["sat"] for r in rows if r["config"] == c and r["mode"] == mode]))
                   for c in CONFIGS}
            print(f"{mode}: at {fixed[mode]:.0f} req/s, server CPU per request (median of {args.rounds}): " + ", ".join(
                f"{c} {cpu[c]:.0f} us (ratio {cpu[c] / cpu['off']:.3f})" for c in CONFIGS)
                + "; saturation: " + ", ".join(f"{c} {sat[c]:.0f} req/s (ratio {sat[c] / sat['off']:.3f})"
                                               for c in CONFIGS))
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
