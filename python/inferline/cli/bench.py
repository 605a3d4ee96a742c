"""`inferline bench MODEL`: load against any KServe v2 server (inferline, Triton, KServe, MLServer).

    inferline bench digits-mlp --concurrency 64 --duration 10            # closed loop, gRPC unary
    inferline bench digits-mlp --protocol rest --rate 500 --poisson      # open loop, REST
    inferline bench digits-mlp --sweep --p99-target-ms 20 --plot sweep.png
    inferline bench digits-mlp --transport python                        # grpc.aio instead of the C++ client

The engine is inferline.loadgen; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import InferlineError

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "stream": "127.0.0.1:8001", "rest": "http://127.0.0.1:8000"}


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="drive a KServe v2 server (gRPC unary/stream, REST) with load; report latency",
                       description="Load generator for KServe v2 servers. Closed loop (--concurrency) or open loop "
                                   "(--rate; latency from each request's scheduled send time).")
    p.add_argument("model", help="model name")
    p.add_argument("--model-version", default="", help="version (default: the server's choice)")
    p.add_argument("--protocol", choices=("grpc", "stream", "rest"), default="grpc",
                   help="grpc: unary ModelInfer; stream: ModelStreamInfer; rest: POST /v2/models/{m}/infer")
    p.add_argument("--url", help="host:port for gRPC (default 127.0.0.1:8001), http://host:port for REST "
                                 "(default http://127.0.0.1:8000)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=16, help="closed loop: requests in flight (default 16)")
    load.add_argument("--rate", type=float, help="open loop: requests/s offered, all client processes together")
    p.add_argument("--poisson", action="store_true", help="open loop: exponential gaps instead of constant ones")
    p.add_argument("--procs", type=int, default=0, help="client processes (default: from the load and the cores)")
    p.add_argument("--streams", type=int, default=0, help="stream: ModelStreamInfer calls per client process")
    p.add_argument("--transport", choices=("native", "python"),
                   help="gRPC client: native (C++, _core.GrpcLoad; the default for grpc/stream where built) or "
                        "python (grpc.aio; always for rest)")
    p.add_argument("--channels", type=int, default=0,
                   help="native: gRPC connections per client process (default: up to 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load not recorded first (default 1)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured (default 10)")
    p.add_argument("--inputs", metavar="FILE.npz", help="inputs by name (rows cycled) instead of random data")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and Poisson gaps")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds (default 30)")
    p.add_argument("--server-pid", type=int, help="report the server's CPU per request (this pid and its children)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="latency over time; with --sweep, percentiles vs offered rate")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.add_argument("--sweep", action="store_true",
                   help="find the highest open-loop rate whose p99 meets --p99-target-ms (short steps)")
    p.add_argument("--p99-target-ms", type=float, help="--sweep: the p99 target")
    p.add_argument("--sweep-start", type=float, help="--sweep: first rate (default --rate or 100)")
    p.add_argument("--sweep-steps", type=int, default=12, help="--sweep: most steps (default 12)")


def run(args) -> int:
    from ..loadgen import BenchConfig, Target, run_bench
    from ..loadgen.report import format_sweep, format_text, plot

    if args.batch < 1 or args.duration <= 0 or args.warmup < 0 or args.procs < 0:
        raise InferlineError("--batch must be >= 1, --duration > 0, --warmup >= 0, --procs >= 0")
    target = Target(args.url or DEFAULT_URLS[args.protocol], args.protocol, args.model, args.model_version)
    config = BenchConfig(target, concurrency=args.concurrency, rate=args.rate, poisson=args.poisson,
                         procs=args.procs, warmup_s=args.warmup, duration_s=args.duration, inputs=args.inputs,
                         batch=args.batch, seed=args.seed, timeout_s=args.timeout, server_pid=args.server_pid,
                         streams=args.streams, progress=not args.quiet, transport=args.transport or "auto",
                         channels=args.channels)
    if not args.sweep:
        report = run_bench(config)
        if args.plot:
            plot(args.plot, [report])
        print(json.dumps(report) if args.json else format_text(report))
        return 0
    if args.p99_target_ms is None:
        raise InferlineError("--sweep needs --p99-target-ms")
    from ..loadgen.sweep import sweep

    def on_step(r):
        if not args.json:
            print(f"step: {r['offered_rps']:.1f} req/s offered -> p99 {r['latency_ms']['p99']} ms, "
                  f"{r['throughput_rps']:.1f} req/s OK, errors {sum(r['errors'].values())}: "
                  f"{'meets' if r['meets'] else 'misses'} the target", file=sys.stderr, flush=True)

    steps, best = sweep(config, run_bench, args.p99_target_ms, start_rps=args.sweep_start or args.rate or 100.0,
                        max_steps=args.sweep_steps, on_step=on_step)
    if args.plot:
        plot(args.plot, steps, args.p99_target_ms)
    if args.json:
        print(json.dumps({"p99_target_ms": args.p99_target_ms, "best_rps": best["offered_rps"] if best else None,
                          "steps": steps}))
    else:
        print(format_sweep(steps, best, args.p99_target_ms))
    return 0
