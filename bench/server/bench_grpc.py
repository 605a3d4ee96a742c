"""Single-row gRPC requests to the demo model, next to the Python gRPC floor.

    python bench/server/bench_grpc.py [--seconds 5] [--quick] [--fallback-overhead | --canary-overhead |
                                       --baseline-python PATH]

For each server (a no-op grpc.aio server answering a fixed ModelInferResponse:
the floor; `inferline serve` with 1 and 2 workers) and each mode (unary,
streaming), it measures:
  - saturation: closed loop, many concurrent calls from several client
    processes -> requests/s;
  - fixed rates (50% and 80% of that server's saturation, open loop) -> p50/p99.
One line per configuration; the last block is a table with the ratio to the
floor measured in the same run. The clients share this machine's cores with
the server, as the floor's clients do.

--canary-overhead: instead, inferline with a 10% canary of digits-mlp (held at its first step, so
the split, the per-arm recording and the mirrored copies of canary requests all run), the same
canary with mirroring off (``canary.mirror_share`` 0), and the model with no rollout, alternately
in the same run; requests carry 256 distinct routing keys. Besides saturation it offers each the
same open-loop rate (60% of the first no-rollout saturation) and reads the server's CPU time
(/proc) over that run: CPU microseconds per request, the cost the canary adds. Only saturation and
that rate are run (no 50%/80% rows), ``--rounds`` times each; the summary gives medians.

--bare-onnx: digits-mlp's model.onnx is pushed alone, as a new user's bare .onnx would be: no
preprocessing and no backend settings, so the runtime's serving defaults apply.

--scrape-overhead: instead, inferline with a scraper reading its /metrics every second and
inferline unscraped, alternately, ``--rounds`` times each, measured as for --canary-overhead;
the summary gives the medians and their ratios (the scrapes' CPU is the server's: it is counted).

--baseline-python PATH: instead, this installation's `inferline serve` and another one's (the
python of a virtual environment with, e.g., main before a change installed), alternately,
``--rounds`` times each, measured as for --canary-overhead (saturation, and server CPU per
request at one open-loop rate); the summary gives the medians and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from inferline.loadgen.procstat import process_cpu_s  # noqa: F401  (also used by bench/server/*.py)

METHOD = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_bytes(routing_key=None) -> bytes:
    from inferline.server.proto import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name="digits-mlp")
    req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(np.random.default_rng(0).integers(0, 17, 64).astype(np.float32).tobytes())
    if routing_key is not None:
        req.parameters["routing_key"].string_param = routing_key
    return req.SerializeToString()


def response_bytes() -> bytes:
    from inferline.server.proto import inference_pb2 as pb

    resp = pb.ModelInferResponse(model_name="digits-mlp", model_version="1")
    resp.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
    resp.outputs.add(name="label", datatype="INT64", shape=[1, 1])
    resp.raw_output_contents.extend([bytes(40), bytes(8)])
    return resp.SerializeToString()


# ---- the floor: a no-op grpc.aio server -------------------------------------------
def noop_server(port: int) -> None:
    import grpc
    from inferline.server.proto import inference_pb2 as pb

    payload = response_bytes()
    stream_payload = pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse.FromString(payload))
    stream_payload = stream_payload.SerializeToString()

    async def infer(request, context):
        return payload

    async def stream(requests, context):
        async for _ in requests:
            yield stream_payload

    async def main():
        ident = lambda b: b  # noqa: E731
        handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer, ident, ident),
                    "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream, ident, ident)}
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                                                               handlers)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# ---- the load generator ----------------------------------------------------------------
async def _client(port, mode, concurrency, rate, seconds, payload):
    import grpc

    ident = lambda b: b  # noqa: E731
    latencies, errors = [], 0
    payloads = itertools.cycle(payload if isinstance(payload, list) else [payload])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(METHOD, request_serializer=ident, response_deserializer=ident)
        stop_at = time.perf_counter() + seconds
        if mode == "unary":
            async def one():
                nonlocal errors
                t0 = time.perf_counter()
                try:
                    await unary(next(payloads))
                    latencies.append(time.perf_counter() - t0)
                except grpc.RpcError:
                    errors += 1

            if rate is None:  # closed loop
                async def worker():
                    while time.perf_counter() < stop_at:
                        await one()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
            else:  # open loop at `rate` per second
                tasks, interval, next_t = [], 1.0 / rate, time.perf_counter()
                while next_t < stop_at:
                    now = time.perf_counter()
                    if now < next_t:
                        await asyncio.sleep(next_t - now)
                    tasks.append(asyncio.ensure_future(one()))
                    next_t += interval
                await asyncio.gather(*tasks)
        else:
            stream = channel.stream_stream(STREAM, request_serializer=ident, response_deserializer=ident)

            async def stream_worker():
                call = stream()
                sent = []
                done = asyncio.Event()

                async def reader():
                    async for _ in call:
                        latencies.append(time.perf_counter() - sent.pop(0))
                    done.set()

                r = asyncio.ensure_future(reader())
                interval = None if rate is None else n_streams / rate
                window = 16
                while time.perf_counter() < stop_at:
                    if rate is None:
                        while len(sent) >= window:
                            await asyncio.sleep(0)
                    sent.append(time.perf_counter())
                    await call.write(next(payloads))
                    if interval:
                        await asyncio.sleep(interval)
                await call.done_writing()
                await r

            n_streams = concurrency if rate is None else 4
            await asyncio.gather(*(stream_worker() for _ in range(n_streams)))
    return latencies, errors


def _client_proc(args, queue):
    queue.put(asyncio.run(_client(*args)))


def load(port, mode, procs, concurrency, rate, seconds, keys=0):
    payload = [request_bytes(f"user-{i}") for i in range(keys)] if keys else request_bytes()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per_rate = None if rate is None else rate / procs
    ps = [ctx.Process(target=_client_proc, args=((port, mode, concurrency, per_rate, seconds, payload), queue))
          for _ in range(procs)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    results = [queue.get() for _ in ps]
    for p in ps:
        p.join()
    elapsed = time.perf_counter() - t0
    lat = np.array([x for r in results for x in r[0]])
    errors = sum(r[1] for r in results)
    return {"rps": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else 0,
            "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else 0, "errors": errors,
            "elapsed": elapsed, "n": len(lat)}


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def start_inferline(workers, repo, python=sys.executable):
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if python == sys.executable or k != "PYTHONPATH"}
    proc = subprocess.Popen([python, "-m", "inferline", "serve", "--repository", repo, "--workers",
                             str(workers), "--http-port", str(http), "--grpc-port", str(grpc_port),
                             "--metrics-port", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tempfile.gettempdir() if python != sys.executable else None)
    proc.metrics_port = metrics
    lines = 0
    for line in proc.stdout:
        lines += "models ready" in line
        if lines >= workers:
            break
    return proc, grpc_port


def overload_counters(metrics_port) -> str:
    """The server's admission refusals and lobby admissions so far (its /metrics): whether the
    overload machinery acted at all during the runs (none of it does below the admission limit)."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        return f"metrics unreadable ({e})"
    keep = ("inferline_admission_refused_total", "inferline_admission_lobby_admitted_total")
    found = [line.split(" ", 1) for line in text.splitlines() if line.startswith(keep)]
    return ", ".join(f"{name.replace('inferline_admission_', '')}={float(v):.0f}" for name, v in found) or "none exported"


class Scraper:
    """GETs /metrics on `port` every `interval_s` on a thread of its own, as a Prometheus would."""

    def __init__(self, port, interval_s=1.0):
        import threading
        self.count = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, interval_s), daemon=True)
        self._thread.start()

    def _run(self, port, interval_s):
        import urllib.request
        while not self._stop.wait(interval_s):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    r.read()
                self.count += 1
            except OSError:
                self.failed += 1

    def stop(self):
        self._stop.set()
        self._thread.join(15)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--fallback-overhead", action="store_true",
                    help="instead: inferline with digits-mlp's fallback declared (and unused) vs none, same run")
    ap.add_argument("--canary-overhead", action="store_true",
                    help="instead: inferline with a 10%% canary of digits-mlp vs no rollout, same run")
    ap.add_argument("--baseline-python", metavar="PATH",
                    help="instead: this installation vs the inferline installed for PATH (a python), same run")
    ap.add_argument("--scrape-overhead", action="store_true",
                    help="instead: inferline scraped (/metrics every second) vs not scraped, same run")
    ap.add_argument("--modes", default="unary,stream", help="comma-separated: unary, stream")
    ap.add_argument("--bare-onnx", action="store_true",
                    help="serve digits-mlp's model.onnx pushed bare (no package settings) instead of its package")
    ap.add_argument("--rounds", type=int, default=4,
                    help="--canary-overhead, --baseline-python: alternations (medians reported)")
    args = ap.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push

    repo = tempfile.mkdtemp(prefix="inferline-bench-")
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    if args.bare_onnx:  # the graph alone: no preprocessing, no backend settings (the runtime's defaults)
        push(registry, os.path.join(demo_package_path("digits-mlp"), "model.onnx"), name="digits-mlp")
    else:
        push(registry, demo_package_path("digits-mlp"))
    registry.close()

    repos = {"inferline": repo}
    configs = [("noop-grpc.aio", 1), ("inferline", 1), ("inferline", 2)]
    if args.fallback_overhead:
        bare = tempfile.mkdtemp(prefix="inferline-bench-nofallback-")
        registry = open_registry(bare)
        push(registry, demo_package_path("digits-logreg"))
        mlp = push(registry, demo_package_path("digits-mlp"))
        registry.set_fallback(mlp.name, mlp.version, None)  # the same model, no fallback declared
        registry.close()
        repos["inferline-no-fallback"] = bare
        # the floor first (the table's ratios), then the two alternately, twice each
        configs = [("noop-grpc.aio", 1)] + [("inferline", 1), ("inferline-no-fallback", 1)] * 2
    keys, fixed = 0, {}
    pythons = {}
    if args.baseline_python:
        repos["inferline-baseline"] = repo
        pythons["inferline-baseline"] = args.baseline_python
        configs = [("noop-grpc.aio", 1)] + [("inferline", 1), ("inferline-baseline", 1)] * args.rounds
    if args.scrape_overhead:
        repos["inferline-scraped"] = repo
        configs = [("noop-grpc.aio", 1)] + [("inferline", 1), ("inferline-scraped", 1)] * args.rounds
    per_request_cpu = bool(args.canary_overhead or args.baseline_python or args.scrape_overhead)
    if args.canary_overhead:
        repos["inferline-canary-10"] = canary_repository(demo_package_path("digits-mlp"),
                                                         demo_package_path("digits-logreg"))
        repos["canary-10-no-mirror"] = canary_repository(demo_package_path("digits-mlp"),
                                                         demo_package_path("digits-logreg"), mirror_share=0.0)
        configs = [("noop-grpc.aio", 1)] + [("inferline", 1), ("inferline-canary-10", 1),
                                            ("canary-10-no-mirror", 1)] * args.rounds
        keys = 256
    rows = []
    for server, workers in configs:
        if server == "noop-grpc.aio":
            port = free_port()
            proc = mp.get_context("spawn").Process(target=noop_server, args=(port,))
            proc.start()
            wait_port(port)
        else:
            proc, port = start_inferline(workers, repos[server], pythons.get(server, sys.executable))
        scraper = Scraper(proc.metrics_port) if server == "inferline-scraped" else None
        try:
            for mode in args.modes.split(","):
                sat = load(port, mode, args.procs, 64, None, seconds, keys)
                row = {"server": server, "workers": workers, "mode": mode, "sat": sat}
                for frac in (0.5, 0.8):
                    row[frac] = row["sat"] if per_request_cpu else \
                        load(port, mode, args.procs, 64, sat["rps"] * frac, seconds, keys)
                if per_request_cpu and server != "noop-grpc.aio":
                    fixed.setdefault(mode, 0.6 * sat["rps"])
                    cpu0 = process_cpu_s(proc.pid)
                    row["fixed"] = load(port, mode, args.procs, 64, fixed[mode], seconds, keys)
                    row["cpu_us"] = (process_cpu_s(proc.pid) - cpu0) / max(row["fixed"]["n"], 1) * 1e6
                rows.append(row)
                print(f"server={server} workers={workers} mode={mode} saturation_rps={sat['rps']:.0f} "
                      f"errors={sat['errors']} " + " ".join(
                          f"at{int(f * 100)}%: rps={row[f]['rps']:.0f} p50_ms={row[f]['p50_ms']:.2f} "
                          f"p99_ms={row[f]['p99_ms']:.2f}" for f in (0.5, 0.8)), flush=True)
        finally:
            if scraper is not None:
                scraper.stop()
                print(f"scrapes={scraper.count} failed={scraper.failed}", flush=True)
            if isinstance(proc, subprocess.Popen):
                print(f"server={server} overload machinery: {overload_counters(proc.metrics_port)}", flush=True)
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            else:
                proc.terminate()
                proc.join()
    floor = {r["mode"]: r["sat"]["rps"] for r in rows if r["server"] == "noop-grpc.aio"}
    print("\nserver            workers  mode    sat_rps  vs_floor  p50@80%_ms  p99@80%_ms")
    for r in rows:
        print(f"{r['server']:<17} {r['workers']:>7}  {r['mode']:<6} {r['sat']['rps']:>8.0f}  "
              f"{r['sat']['rps'] / floor[r['mode']]:>8.2f}  {r[0.8]['p50_ms']:>10.2f}  {r[0.8]['p99_ms']:>10.2f}")
    if args.fallback_overhead:
        print()
        for mode in args.modes.split(","):
            sat = {name: np.mean([r["sat"]["rps"] for r in rows if r["server"] == name and r["mode"] == mode])
                   for name in ("inferline", "inferline-no-fallback")}
            print(f"{mode}: fallback declared {sat['inferline']:.0f} req/s, none {sat['inferline-no-fallback']:.0f} "
                  f"req/s, ratio {sat['inferline'] / sat['inferline-no-fallback']:.3f}")
    if args.canary_overhead:
        print()
        for mode in args.modes.split(","):
            cpu = {name: np.median([r["cpu_us"] for r in rows if r["server"] == name and r["mode"] == mode])
                   for name in ("inferline", "inferline-canary-10", "canary-10-no-mirror")}
            sat = {name: np.median([r["sat"]["rps"] for r in rows if r["server"] == name and r["mode"] == mode])
                   for name in ("inferline", "inferline-canary-10", "canary-10-no-mirror")}
            print(f"{mode}: at {fixed[mode]:.0f} req/s offered, server CPU per request: no rollout "
                  f"{cpu['inferline']:.0f} us, 10% canary {cpu['inferline-canary-10']:.0f} us (ratio "
                  f"{cpu['inferline-canary-10'] / cpu['inferline']:.3f}), without mirroring "
                  f"{cpu['canary-10-no-mirror']:.0f} us (ratio {cpu['canary-10-no-mirror'] / cpu['inferline']:.3f}); "
                  f"saturation ratio {sat['inferline-canary-10'] / sat['inferline']:.3f} "
                  f"(no mirroring {sat['canary-10-no-mirror'] / sat['inferline']:.3f})")
    if args.baseline_python or args.scrape_overhead:
        print()
        other = "inferline-scraped" if args.scrape_overhead else "inferline-baseline"
        for mode in args.modes.split(","):
            names = ("inferline", other)
            cpu = {n: np.median([r["cpu_us"] for r in rows if r["server"] == n and r["mode"] == mode]) for n in names}
            sat = {n: np.median([r["sat"]["rps"] for r in rows if r["server"] == n and r["mode"] == mode])
                   for n in names}
            print(f"{mode}: saturation this {sat['inferline']:.0f} req/s, {other} {sat[other]:.0f} "
                  f"req/s, ratio {sat['inferline'] / sat[other]:.3f}; at {fixed[mode]:.0f} req/s "
                  f"offered, server CPU per request this {cpu['inferline']:.0f} us, {other} "
                  f"{cpu[other]:.0f} us, ratio {cpu['inferline'] / cpu[other]:.3f} "
                  f"(rounds: " + ", ".join(f"{r['server'].replace('inferline-', '')} {r['cpu_us']:.0f}" for r in rows
                                           if r["mode"] == mode and r["server"] != "noop-grpc.aio") + ")")
    return 0


def canary_repository(mlp_package: str, logreg_package: str, mirror_share: float = 100.0) -> str:
    """A repository whose digits-mlp has a second version (the same model, another label) as a
    10% canary held at its first step (no gate: the bench measures serving, not the gate)."""
    from inferline.models.service import open_registry, push
    from inferline.rollout.lifecycle import start_canary

    repo = tempfile.mkdtemp(prefix="inferline-bench-canary-")
    copy = os.path.join(repo, "mlp-v2")
    shutil.copytree(mlp_package, copy)
    with open(os.path.join(copy, "model.json"), encoding="utf-8") as f:
        config = json.load(f)
    config["labels"] = dict(config.get("labels") or {}, bench="canary copy")
    config["canary"] = {"mirror_share": mirror_share}
    with open(os.path.join(copy, "model.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    registry = open_registry(os.path.join(repo, "registry"))
    push(registry, logreg_package)
    push(registry, mlp_package)
    v2 = push(registry, copy, name="digits-mlp", live=False)
    start_canary(registry, "digits-mlp", v2.version, steps=[10, 100], interval_s=3600, hold=True, skip_gate=True)
    registry.close()
    return os.path.join(repo, "registry")


if __name__ == "__main__":
    sys.exit(main())
