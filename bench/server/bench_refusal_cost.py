"""What one refused call costs a Python gRPC server: server CPU per call, answered vs refused.

    python bench/server/bench_refusal_cost.py [--seconds 3] [--rounds 2]

A grpc.aio server (the frontend's stack: a generic handler on raw bytes, max_concurrent_streams
128) is pinned to CPU 0 and answers ModelInfer in one of three ways: `answer` (returns an empty
response), `abort` (context.abort UNAVAILABLE with a retry-after-ms trailer, as the admission
check does), `set_code` (sets UNAVAILABLE and returns, no exception). A client process on the
other CPUs keeps 64 calls in flight for `--seconds`; the server's CPU time (/proc) over the run,
divided by the calls, is the cost per call. The three modes alternate `--rounds` times.

Why it matters: admission control keeps goodput up only if refusing is much cheaper than
serving. If a refusal costs as much server CPU as a light model's whole request, a flood of
instantly retried refusals takes the CPU the model needs (bench_overload.py's closed loops).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time

METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODES = ("answer", "abort", "set_code")


def _server(port: int, mode: str, ready, cpus) -> None:
    import grpc

    if cpus:
        os.sched_setaffinity(0, cpus)

    async def handler(request, context):
        if mode == "abort":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server overloaded", (("retry-after-ms", "10"),))
        if mode == "set_code":
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("server overloaded")
            context.set_trailing_metadata((("retry-after-ms", "10"),))
        return b""

    async def main():
        rpc = grpc.unary_unary_rpc_method_handler(handler)
        server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 128)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": rpc}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def _client(port: int, seconds: float, concurrency: int = 64) -> dict:
    import grpc

    counts: dict = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        await channel.channel_ready()
        end = time.perf_counter() + seconds

        async def worker():
            while time.perf_counter() < end:
                try:
                    await call(b"\0" * 300, timeout=5)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                counts[code] = counts.get(code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, seconds: float, server_cpus, client_cpus) -> dict:
    from bench_grpc import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_server, args=(port, mode, ready, server_cpus))
    server.start()
    try:
        ready.wait(30)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        cpu0 = _cpu_s(server.pid)
        counts = asyncio.run(_client(port, seconds))
        cpu = _cpu_s(server.pid) - cpu0
    finally:
        server.terminate()
        server.join()
    calls = sum(counts.values())
    return {"mode": mode, "calls_per_s": calls / seconds, "cpu_us_per_call": cpu / max(calls, 1) * 1e6,
            "codes": counts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else (None, None)
    rows = []
    for _ in range(args.rounds):
        for mode in MODES:
            row = measure(mode, args.seconds, server_cpus, client_cpus)
            rows.append(row)
            print(f"mode={row['mode']} calls/s={row['calls_per_s']:.0f} server_cpu_us_per_call="
                  f"{row['cpu_us_per_call']:.0f} codes={row['codes']}", flush=True)
    print("\nmode       server CPU per call (median over rounds), vs answering")
    answer = sorted(r["cpu_us_per_call"] for r in rows if r["mode"] == "answer")[args.rounds // 2]
    for mode in MODES:
        cost = sorted(r["cpu_us_per_call"] for r in rows if r["mode"] == mode)[args.rounds // 2]
        print(f"{mode:<9}  {cost:6.0f} us  {cost / answer:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
