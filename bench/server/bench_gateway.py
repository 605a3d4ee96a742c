"""What the gateway hop costs: one `inferline serve` against a gateway in front of 1 and 2 replicas.

    python bench/server/bench_gateway.py [--seconds 5] [--rounds 3] [--procs 2] [--concurrency 64]

Three set-ups, each served from the same registry (digits-mlp, single-row gRPC requests), measured
alternately ``--rounds`` times in the same run (this machine is shared and noisy):
  - direct:      one `inferline serve --pin digits-mlp:1` (a replica, alone): the baseline;
  - gateway->1:  `inferline serve --ray file:POOLS` forwarding to one such replica;
  - gateway->2:  the same gateway in front of two replicas;
  - ray:gw->2:   with ``--ray``, also a gateway (`inferline serve --ray ADDRESS`) in front of a pool of two
                 replicas that `inferline ray deploy` runs on a local Ray cluster started for the run: each
                 replica its own Ray worker process with its `inferline serve --pin` child.
Per set-up: saturation (closed loop, ``--procs`` client processes x ``--concurrency`` calls) in
requests/s, then one open-loop rate (``--rate-share`` of the first direct saturation) with p50/p99
latency and the CPU each process spent per request there (/proc: gateway, replicas). The summary
gives medians and their ratios to direct. The clients share the machine's cores with the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_grpc import free_port, load, process_cpu_s  # noqa: E402


def start_replica(repo: str, pin: str):
    ready = os.path.join(tempfile.mkdtemp(prefix="bench-replica-"), "ready.json")
    proc = subprocess.Popen([sys.executable, "-m", "inferline", "serve", "--repository", repo, "--pin", pin,
                             "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--ready-file", ready,
                             "--drain-seconds", "0", "--inference-log", "off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"replica {pin} did not start")
        time.sleep(0.05)
    with open(ready) as f:
        proc.grpc_port = json.load(f)["grpc_port"]
    return proc


def start_gateway(repo: str, pools: str, ray: bool = False):
    """`pools`: a pools file, or with `ray` the cluster's address."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "inferline", "serve", "--repository", repo, "--ray",
                             pools if ray else f"file:{pools}", "--grpc-port", str(port),
                             "--http-port", str(free_port()),
                             "--metrics-port", str(free_port()), "--drain-seconds", "0", "--inference-log", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "models ready" in line:
            if "digits-mlp:1" not in line:
                raise RuntimeError(f"gateway serves no digits-mlp: {line.strip()}")
            break
    proc.grpc_port = port
    return proc


class RayHead:
    """A private local Ray cluster for the run (own ports, temp dir and auth token)."""

    def __init__(self):
        import secrets
        self.tmp = tempfile.mkdtemp(prefix="ilbench-ray-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        self.proc = subprocess.Popen([ray_cli, "start", "--head", "--block", "--num-cpus", "8",
                                      "--port", str(self.port),
                                      "--disable-usage-stats", "--include-dashboard=false",
                                      "--temp-dir", os.path.join(self.tmp, "t")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("ray start failed")
                time.sleep(0.2)

    def stop(self) -> None:
        import ray
        if ray.is_initialized():
            from ray import serve
            serve.shutdown()
            ray.shutdown()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)


def ray_gateway(repo: str, head: RayHead):
    """A pool of 2 digits-mlp replicas on the cluster and a gateway reading its directory."""
    from inferline.ray.deploy import deploy
    deploy(repo, head.address, replicas=2, wait_ready_s=120, grace_s=1)
    return start_gateway(repo, head.address, ray=True)


def stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def measure(name: str, front, processes: dict, args, rate: float) -> dict:
    sat = load(front.grpc_port, "unary", args.procs, args.concurrency, None, args.seconds)
    before = {k: process_cpu_s(p.pid) for k, p in processes.items()}
    fixed = load(front.grpc_port, "unary", args.procs, 16, rate, args.seconds)
    cpu = {k: (process_cpu_s(p.pid) - before[k]) * 1e6 / max(1, fixed["n"]) for k, p in processes.items()}
    row = {"setup": name, "sat_rps": sat["rps"], "sat_errors": sat["errors"], "rate": rate,
           "p50_ms": fixed["p50_ms"], "p99_ms": fixed["p99_ms"], "errors": fixed["errors"],
           "cpu_us": cpu, "cpu_us_total": sum(cpu.values())}
    print(json.dumps(row), flush=True)
    return row


def run_setup(setup: str, repo: str, pools_file: str, head, args, rows: list, rate):
    """Measures one set-up (appending its row); returns the open-loop rate (set by the first direct run)."""
    if setup == "ray:gw->2":
        front = ray_gateway(repo, head)
        replicas, procs = [], [front]
    else:
        replicas = [start_replica(repo, "digits-mlp:1") for _ in range(2 if setup == "gateway->2" else 1)]
        procs = list(replicas)
    try:
        if setup == "direct":
            front, processes = replicas[0], {"replica": replicas[0]}
        elif setup == "ray:gw->2":
            processes = {"gateway": front, **ray_replica_processes()}
        else:
            with open(pools_file, "w") as f:
                json.dump({"digits-mlp:1": [f"127.0.0.1:{r.grpc_port}" for r in replicas]}, f)
            front = start_gateway(repo, pools_file)
            procs.append(front)
            processes = {"gateway": front, **{f"replica{i}": r for i, r in enumerate(replicas)}}
        if rate is None:  # the first direct saturation sets the open-loop rate for all
            probe = load(front.grpc_port, "unary", args.procs, args.concurrency, None, args.seconds)
            rate = round(probe["rps"] * args.rate_share)
        rows.append(measure(setup, front, processes, args, rate))
    finally:
        stop(procs)
        if setup == "ray:gw->2":  # the pool goes too: its idle replicas would be noise in the next runs
            from ray import serve
            from inferline.ray.directory import app_name
            serve.delete(app_name("digits-mlp", 1))
    return rate


class _Pid:
    def __init__(self, pid: int):
        self.pid = pid


def ray_replica_processes() -> dict:
    """The Ray worker processes of the pool's replicas (their `inferline serve` children included)."""
    import ray
    from inferline.ray.directory import directory
    listed = ray.get(directory().endpoints.remote()).get("digits-mlp:1", [])
    return {f"replica{i}": _Pid(e["load"]["pid"]) for i, e in enumerate(listed)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight per client process (saturation)")
    ap.add_argument("--rate-share", type=float, default=0.4,
                    help="open-loop rate, as a share of the first direct saturation (default 0.4)")
    ap.add_argument("--ray", action="store_true",
                    help="also a gateway in front of 2 replicas run by Ray Serve on a local cluster")
    args = ap.parse_args()
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push

    repo = tempfile.mkdtemp(prefix="inferline-bench-gw-")
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))
    registry.close()
    pools_file = os.path.join(repo, "pools.json")
    rows, rate = [], None
    setups = ("direct", "gateway->1", "gateway->2") + (("ray:gw->2",) if args.ray else ())
    head = RayHead() if args.ray else None
    try:
        for _ in range(args.rounds):
            for setup in setups:
                rate = run_setup(setup, repo, pools_file, head, args, rows, rate)
    finally:
        if head is not None:
            head.stop()
    print(f"\nmedians of {args.rounds} rounds; open-loop rate {rate}/s; ratios to direct")
    print(f"{'setup':<12} {'sat req/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>11} "
          f"{'ratio':>6}  {'of which gateway':>16}")
    base = None
    for setup in setups:
        mine = [r for r in rows if r["setup"] == setup]
        sat = statistics.median(r["sat_rps"] for r in mine)
        cpu = statistics.median(r["cpu_us_total"] for r in mine)
        gw = statistics.median(r["cpu_us"].get("gateway", 0.0) for r in mine)
        p50 = statistics.median(r["p50_ms"] for r in mine)
        p99 = statistics.median(r["p99_ms"] for r in mine)
        errors = sum(r["errors"] + r["sat_errors"] for r in mine)
        base = base or (sat, cpu)
        print(f"{setup:<12} {sat:>10.0f} {sat / base[0]:>6.2f} {p50:>7.2f} {p99:>7.2f} {cpu:>11.0f} "
              f"{cpu / base[1]:>6.2f}  {gw:>16.0f}" + (f"  errors {errors}" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
