"""Where an overloaded server's CPU goes, thread by thread (issue 13).

Serves digits-heavy with `inferline serve` on CPU 0 and drives it from CPU 1 with the native load
generator (_core.GrpcLoad, 2 generators x 4 connections): first its capacity (the best of closed
loops with 8 and 32 calls in flight per generator, no deadline), then `--repeat` runs of one
overload shape (open loop at `--multiple` x capacity, or `--closed`: m x capacity x 200 ms calls in
flight, the bench_overload.py sizing), each with a 200 ms deadline. Prints each run's goodput over
capacity and the server's RSS before and after it, then, for the last run, each thread group's
share of the server's core and its context switches per second (/proc/PID/task). Each line also
gives the model's compute per row (wall time of the backend's batches from /metrics, over the rows
they held): when it rises from capacity to overload, the model is sharing its core, not idle. E.g.

    python bench/server/overload_threads.py                   # open 10x, about 40 s
    python bench/server/overload_threads.py --closed --repeat 5
    python bench/server/overload_threads.py --perf            # and `perf record -C 0` of the last run
    python bench/server/overload_threads.py --syscalls        # and the server's syscalls per call

Threads are grouped by name with trailing digits dropped: `python` holds the model's executor,
`il-grpc-` are the native frontend's lanes (each polls one gRPC completion queue: reads every call,
admits and parses it), `il-lobby` answers the requests the admission lobby refuses, and
`default-executo` and `grpc_global_tim` are gRPC's own.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEADLINE_S = 0.2
TICK = os.sysconf("SC_CLK_TCK")


def thread_groups(pid: int) -> collections.Counter:
    """{(group, "cpu"|"inv"|"vol"): CPU seconds, involuntary, voluntary switches} over its threads."""
    out: collections.Counter = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                group = f.read().strip().rstrip("0123456789")
            with open(f"{base}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        out[(group, "cpu")] += (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
        out[(group, "inv")] += int(status["nonvoluntary_ctxt_switches"])
        out[(group, "vol")] += int(status["voluntary_ctxt_switches"])
    return out


def model_time(metrics_port: int) -> tuple:
    """(backend seconds, rows) so far: the sums of the server's compute-duration and batch-size
    histograms (/metrics on its control listener)."""
    from inferline.report.scrape import fetch_scrape

    scrape = fetch_scrape(f"http://127.0.0.1:{metrics_port}")
    return (scrape.total("inferline_compute_duration_seconds_sum") or 0.0,
            scrape.total("inferline_batch_size_sum") or 0.0)


def per_row(before: tuple, after: tuple) -> str:
    seconds, rows = after[0] - before[0], after[1] - before[1]
    return f"model {seconds / rows * 1e3:.3f} ms per row" if rows > 0 else "model: no rows"


SYSCALLS = ("sendmsg", "recvmsg", "write", "read", "epoll_wait", "futex")


def count_syscalls(pid: int, seconds: float) -> subprocess.Popen:
    """`perf stat` of the server's syscalls in SYSCALLS for `seconds` (its report on stderr)."""
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    return subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def syscall_counts(report: str) -> dict:
    """{syscall: count} from `perf stat -x ,` output."""
    out = {}
    for line in report.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_") and fields[0].isdigit():
            out[fields[2][len("syscalls:sys_enter_"):]] = int(fields[0])
    return out


def tcp_out_segments() -> int:
    """TCP segments this machine has sent so far (/proc/net/snmp: OutSegs), every process's."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("OutSegs")])


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (utime + stime, every thread, ended ones included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def drive(port: int, payloads, *, seconds: float, concurrency: int = 1, rate: float = 0.0,
          timeout: float = 30.0, generators: int = 2):
    """(OK answers/s, sent/s, {code: count}) from `generators` native load generators at once."""
    from inferline import _core
    from overload_servers import METHOD

    loads = [_core.GrpcLoad(f"127.0.0.1:{port}", METHOD, list(payloads), channels=4, concurrency=max(1, concurrency),
                            rate=rate / generators, warmup_s=0.0, duration_s=seconds, timeout_s=timeout,
                            max_outstanding=1_000_000) for _ in range(generators)]
    for load in loads:
        load.wait_ready(30.0)
    results = [None] * generators
    start = time.monotonic() + 0.05
    runners = [threading.Thread(target=lambda i=i: results.__setitem__(i, loads[i].run(start)))
               for i in range(generators)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    codes: collections.Counter = collections.Counter()
    for r in results:
        codes.update(r["errors"])
    return sum(r["ok"] for r in results) / seconds, sum(r["sent_total"] for r in results) / seconds, dict(codes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--multiple", type=float, default=10.0, help="offered load, x capacity")
    ap.add_argument("--closed", action="store_true", help="closed loops instead of an open loop")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each overload run")
    ap.add_argument("--repeat", type=int, default=1, help="overload runs, back to back (RSS after each)")
    ap.add_argument("--perf", action="store_true", help="perf record -g -C 0 during the last run")
    ap.add_argument("--syscalls", action="store_true", help="perf stat of the server's syscalls during the last run")
    ap.add_argument("--server-args", default="", help="more `inferline serve` flags")
    ap.add_argument("--no-pin", action="store_true",
                    help="server and load generators share every CPU (bench_overload.py --no-pin); shares are "
                         "then of one core, and may add up to more than 100%%")
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2 and not args.no_pin:
        print("needs 2 CPUs: the server on one, the load generators on another", file=sys.stderr)
        return 2

    from heavy_model import build_package
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push
    from overload_servers import golden_payloads, start_server, stop_server, wait_and_check

    workdir = tempfile.mkdtemp(prefix="inferline-overload-threads-")
    registry = open_registry(os.path.join(workdir, "repo"))
    package = build_package(workdir, demo_package_path("digits-mlp"))
    push(registry, package)
    registry.close()
    payloads, logits = golden_payloads(package, "digits-heavy")
    proc, port, metrics_port, log_path = start_server("inferline", workdir, package, None,
                                                      None if args.no_pin else {0}, args.server_args.split())
    if not args.no_pin:
        os.sched_setaffinity(0, {1})
    try:
        wait_and_check("inferline", port, proc, payloads, logits, log_path)
        capacity, capacity_model = 0.0, ""
        for c in (8, 32):
            model0 = model_time(metrics_port)
            ok = drive(port, payloads, seconds=4.0, concurrency=c)[0]
            if ok > capacity:
                capacity, capacity_model = ok, per_row(model0, model_time(metrics_port))
        print(f"capacity {capacity:.0f} OK/s; {capacity_model}", flush=True)
        shape = (dict(concurrency=max(1, round(args.multiple * capacity * DEADLINE_S / 2))) if args.closed
                 else dict(rate=args.multiple * capacity))
        name = f"{'closed' if args.closed else 'open'} {args.multiple:g}x"
        for i in range(args.repeat):
            last = i == args.repeat - 1
            before, t0, rss0 = thread_groups(proc.pid), time.monotonic(), rss_mb(proc.pid)
            model0, segments0 = model_time(metrics_port), tcp_out_segments()
            perf = stat = None
            if last and args.syscalls:
                stat = count_syscalls(proc.pid, args.seconds - 2)
            if last and args.perf:
                perf = subprocess.Popen(["perf", "record", "-F", "2000", "-g", "-C", "0", "-o",
                                         os.path.join(workdir, "perf.data"), "--", "sleep", str(args.seconds - 2)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            good, sent, codes = drive(port, payloads, seconds=args.seconds, timeout=DEADLINE_S, **shape)
            after, elapsed = thread_groups(proc.pid), time.monotonic() - t0
            segments = (tcp_out_segments() - segments0) / (sent * args.seconds)
            model = per_row(model0, model_time(metrics_port))
            if perf is not None:
                perf.wait()
                print(f"perf data: {os.path.join(workdir, 'perf.data')}")
            print(f"{name} run {i + 1}: sent {sent:.0f}/s, OK within {DEADLINE_S * 1000:.0f} ms {good:.0f}/s = "
                  f"{good / capacity:.3f} x capacity; {model}; TCP segments per call {segments:.2f}; "
                  f"RSS {rss0:.0f} -> {rss_mb(proc.pid):.0f} MB; {codes}",
                  flush=True)
            if stat is not None:
                counts = syscall_counts(stat.communicate()[1])
                calls = sent * (args.seconds - 2)
                print("server syscalls per call sent: " + ", ".join(f"{name} {counts.get(name, 0) / calls:.2f}"
                                                                    for name in SYSCALLS), flush=True)
        print(f"\nthreads during the last run ({elapsed:.1f} s): share of one core, context switches per second")
        for group in sorted({g for g, _ in after}, key=lambda g: -(after[(g, "cpu")] - before[(g, "cpu")])):
            d = {k: after[(group, k)] - before[(group, k)] for k in ("cpu", "inv", "vol")}
            if d["cpu"] >= 0.01 or d["inv"] + d["vol"] >= 100:
                print(f"  {group:18s} {d['cpu'] / elapsed * 100:5.1f}%  involuntary {d['inv'] / elapsed:7.0f}/s"
                      f"  voluntary {d['vol'] / elapsed:7.0f}/s")
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
