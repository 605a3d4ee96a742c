"""Is decoding/encoding ModelInferRequest in Python worth moving to C++? (issue 4, item 2)

    python bench/server/decode_cost.py [--seconds 5] [--concurrency 16]

1. Micro-benchmark (timeit, best of 7) of the Python work the gRPC frontend does per
   request, on a realistic single-row request to digits-mlp (FP32 [1, 64] in, FP32 [1, 10]
   and INT64 [1, 1] out): parse the bytes (upb), convert to ``types.InferRequest``, convert
   the ``InferResponse`` back and serialize it.
2. The whole per-request cost in the server: a server process (Engine + ModelManager +
   DataPlane + start_grpc, demo models) answers tritonclient.grpc.aio clients for a fixed
   time; its CPU time (utime + stime from /proc) divided by the requests answered is the
   server's CPU cost per request, whatever the client costs on the same machine.
3. The same for a no-op grpc.aio server (fixed answer, no parsing): the Python gRPC floor.

Prints one line per measurement and the share of (1) in (2). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
import timeit

import numpy as np

FEATURES = 64


# ---- 1. Python decode + encode ---------------------------------------------------

def micro(number: int = 20000) -> dict:
    from inferline.server.proto import convert
    from inferline.server.proto import inference_pb2 as pb
    from inferline.server.types import InferOutput, InferResponse

    x = np.random.default_rng(0).random((1, FEATURES), dtype=np.float32)
    raw = pb.ModelInferRequest(
        model_name="digits-mlp", id="req-1",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, FEATURES])],
        raw_input_contents=[x.tobytes()]).SerializeToString()
    batch_logits = np.zeros((32, 10), np.float32)  # outputs are row views of a batch output
    batch_label = np.zeros((32, 1), np.int64)
    resp = InferResponse("digits-mlp", "1", "req-1", [
        InferOutput("logits", "FP32", [1, 10], batch_logits[3:4]),
        InferOutput("label", "INT64", [1, 1], batch_label[3:4])])
    msg = pb.ModelInferRequest.FromString(raw)

    steps = {
        "parse": lambda: pb.ModelInferRequest.FromString(raw),
        "decode": lambda: convert.decode_infer_request(msg),
        "encode": lambda: convert.encode_infer_response(resp).SerializeToString(),
        "total": lambda: (convert.decode_infer_request(pb.ModelInferRequest.FromString(raw)),
                          convert.encode_infer_response(resp).SerializeToString()),
    }
    out = {}
    for name, fn in steps.items():
        best = min(timeit.repeat(fn, number=number, repeat=7)) / number
        out[name] = best * 1e6
        print(f"python_{name:<7} request=FP32[1,{FEATURES}] bytes={len(raw)}  us_per_req={best * 1e6:.2f}")
    return out


# ---- 2. whole server, CPU per request --------------------------------------------

def _serve(repo: str, port_queue) -> None:
    from inferline.engine import Engine
    from inferline.server.dataplane import DataPlane
    from inferline.server.grpc_frontend import start_grpc
    from inferline.service.sync import ModelManager
    from inferline.server.settings import ServerSettings

    async def main():
        engine = Engine()
        manager = ModelManager(engine, repository=repo)
        await manager.sync()
        frontend = await start_grpc(DataPlane.for_settings(manager, ServerSettings(grpc_port=0)), ServerSettings(grpc_port=0))
        port_queue.put(frontend.port)
        await asyncio.Event().wait()  # until terminated

    asyncio.run(main())


def _serve_noop(repo: str, port_queue) -> None:
    """The Python gRPC floor: ModelInfer answers a fixed response without parsing the request."""
    import grpc
    from inferline.server.grpc_frontend import SERVICE
    from inferline.server.proto import inference_pb2 as pb

    response = pb.ModelInferResponse(model_name="digits-mlp", model_version="1", outputs=[
        pb.ModelInferResponse.InferOutputTensor(name="logits", datatype="FP32", shape=[1, 10]),
        pb.ModelInferResponse.InferOutputTensor(name="label", datatype="INT64", shape=[1, 1])],
        raw_output_contents=[bytes(40), bytes(8)]).SerializeToString()

    async def infer(raw, context):
        return response

    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
        port_queue.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _drive(port: int, seconds: float, concurrency: int, pid: int) -> tuple:
    import tritonclient.grpc.aio as tc

    x = np.random.default_rng(0).random((1, FEATURES), dtype=np.float32)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    inp = tc.InferInput("pixels", [1, FEATURES], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(50):  # warm up
        await client.infer("digits-mlp", [inp])
    count = 0
    stop_at = 0.0

    async def worker():
        nonlocal count
        while time.perf_counter() < stop_at:
            await client.infer("digits-mlp", [inp])
            count += 1

    cpu0, t0 = _cpu_s(pid), time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, t1 = _cpu_s(pid), time.perf_counter()
    await client.close()
    return count, cpu1 - cpu0, t1 - t0


def server_cost(seconds: float, concurrency: int, noop: bool = False) -> float:
    from inferline.demo_models import DEMO_MODELS, demo_package_path
    from inferline.models.service import open_registry, push

    with tempfile.TemporaryDirectory() as tmp:
        registry = open_registry(os.path.join(tmp, "repo"))
        for name in DEMO_MODELS:
            push(registry, demo_package_path(name))
        registry.close()
        ctx = mp.get_context("spawn")
        ports = ctx.Queue()
        proc = ctx.Process(target=_serve_noop if noop else _serve, args=(os.path.join(tmp, "repo"), ports), daemon=True)
        proc.start()
        try:
            port = ports.get(timeout=120)
            n, cpu, wall = asyncio.run(_drive(port, seconds, concurrency, proc.pid))
        finally:
            proc.terminate()
            proc.join(10)
    us = cpu / n * 1e6
    print(f"server_{'noop ' if noop else 'total'}  concurrency={concurrency} requests={n} req_per_s={n / wall:.0f} "
          f"server_cpu_us_per_req={us:.1f}")
    return us


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    py = micro()
    total = server_cost(args.seconds, args.concurrency)
    server_cost(args.seconds, args.concurrency, noop=True)
    share = py["total"] / total
    verdict = "keep Python" if share < 0.05 else "consider C++ decode"
    print(f"decode_share   python_us={py['total']:.2f} server_cpu_us={total:.1f} share={share:.1%}  -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
