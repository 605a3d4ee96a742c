"""The floor of a refusal in gRPC's C++ server, and what its callback API adds to it.

    python bench/server/grpc_refusal_floor.py [--rate 7000] [--seconds 6] [--rounds 2]

Builds grpc_refusal_floor.cpp (g++ and `pkg-config grpc++`, the packages tools/install.sh
installs) and runs it on CPU 0 in each of its modes: `callback` (a CallbackGenericService, the
native frontend's API, run on gRPC's own threads), `async` (an AsyncGenericService polled by one
thread) and `mixed` (async, with one callback method registered beside it). Each answers every
call DEADLINE_EXCEEDED at once, unread: the least a server built on gRPC can spend on a refusal.
The native load generator (_core.GrpcLoad, on CPU 1) sends an open loop at `--rate` calls a second
with a 200 ms deadline; the server's CPU time (/proc) over the run, divided by the calls, is the
cost of one. Each mode runs with CPU 0 otherwise idle (`idle`), beside a busy loop on CPU 0
(`busy`: the core saturated, as an overloaded server's is by its model), and so with the server's
threads SCHED_BATCH (`batch`: as the native frontend's are while it refuses). `perf stat` counts
the server's futex and sendmsg calls when perf is there.

Why: the admission lobby's refusals at 10x capacity are ~7,000 gRPC calls a second on the
server's core (bench/README.md, "The model's core at 10x, call by call").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))


def build(workdir: str) -> str:
    """The floor server's binary, built in `workdir`."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], check=True, capture_output=True,
                           text=True).stdout.split()
    binary = os.path.join(workdir, "grpc_refusal_floor")
    subprocess.run(["g++", "-O2", "-std=c++17", os.path.join(HERE, "grpc_refusal_floor.cpp"), "-o", binary, *flags],
                   check=True)
    return binary


def measure(binary: str, mode: str, core: str, port: int, rate: float, seconds: float) -> dict:
    """One mode on CPU 0 under `core`: "idle", "busy" (a busy loop beside it) or "batch" (that, and
    the server's threads SCHED_BATCH)."""
    from overload_threads import count_syscalls, cpu_seconds, drive, syscall_counts

    busy = core != "idle"
    cmd = [binary, mode, f"127.0.0.1:{port}"]
    if core == "batch":
        cmd = ["chrt", "--batch", "0", *cmd]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    os.sched_setaffinity(server.pid, {0})
    hog = None
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{mode} server did not start")
        if busy:
            hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
        payload = [b"\x0a\x05floor" + bytes(300)]  # a ModelInferRequest-sized body, never read
        drive(port, payload, seconds=1.0, rate=min(rate, 1000.0), timeout=0.2)  # connections up
        stat = count_syscalls(server.pid, seconds - 2) if shutil.which("perf") else None
        cpu0 = cpu_seconds(server.pid)
        _, sent, codes = drive(port, payload, seconds=seconds, rate=rate, timeout=0.2)
        cpu = cpu_seconds(server.pid) - cpu0
        counts = syscall_counts(stat.communicate()[1]) if stat is not None else {}
    finally:
        for proc in (hog, server):
            if proc is not None:
                proc.kill()
                proc.wait()
    calls = sent * seconds
    stat_calls = sent * (seconds - 2)
    return {"mode": mode, "core": core, "sent": sent, "us_per_call": cpu / calls * 1e6,
            "share": cpu / seconds, "futex": counts.get("futex", float("nan")) / stat_calls if counts else float("nan"),
            "sendmsg": counts.get("sendmsg", float("nan")) / stat_calls if counts else float("nan"), "codes": codes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=7000.0, help="calls a second (open loop)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs: the server on one, the load generator on another", file=sys.stderr)
        return 2
    from bench_grpc import free_port

    workdir = tempfile.mkdtemp(prefix="inferline-refusal-floor-")
    binary = build(workdir)
    os.sched_setaffinity(0, {1})
    print(f"{'mode':9s} {'CPU 0':5s} {'sent/s':>7s} {'us/call':>8s} {'core %':>7s} {'futex':>6s} {'sendmsg':>8s}  codes")
    for _ in range(args.rounds):
        for core in ("idle", "busy", "batch"):
            for mode in ("callback", "mixed", "async"):
                r = measure(binary, mode, core, free_port(), args.rate, args.seconds)
                print(f"{r['mode']:9s} {r['core']:5s} {r['sent']:7.0f} {r['us_per_call']:8.1f} {r['share'] * 100:7.1f} "
                      f"{r['futex']:6.2f} {r['sendmsg']:8.2f}  {r['codes']}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
