"""Latency regression suite, over the network: one request per benchmark iteration to a real
`inferline serve` (started once per session, conftest.py's `bench_server`) on this machine.

    pytest bench/test_bench_latency.py bench/test_bench_server.py --benchmark-only

- gRPC: one `ModelInfer` (KServe v2), the request encoded once beforehand, raw bytes on a
  grpc channel (so the client's own protobuf work is not in the time);
- REST: one `POST /v2/models/{name}/infer` with a JSON body encoded once, on one keep-alive
  HTTP/1.1 connection (http.client).

Models: `digits-mlp-nowait` (the demo package with `max_queue_delay_us` 0: the request path
itself) and the demo `digits-mlp` as shipped (a lone request waits for its 2 ms window).
Every answer's logits are checked against the package's golden ones before timing.
"""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _golden(package: str):
    golden = np.load(f"{package}/golden.npz")
    return golden["inputs/pixels"][3:4].astype(np.float32), golden["outputs/logits"][3:4]


@pytest.mark.parametrize("model", ["digits-mlp-nowait", "digits-mlp"])
def test_grpc_model_infer(benchmark, bench_server, model):
    import grpc
    from inferline.demo_models import demo_package_path
    from inferline.server.proto import inference_pb2 as pb

    pixels, logits = _golden(demo_package_path("digits-mlp"))
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="pixels", datatype="FP32", shape=list(pixels.shape))
    req.raw_input_contents.append(pixels.tobytes())
    payload = req.SerializeToString()
    ident = lambda b: b  # noqa: E731
    with grpc.insecure_channel(f"127.0.0.1:{bench_server.grpc}") as channel:
        infer = channel.unary_unary(METHOD, request_serializer=ident, response_deserializer=ident)
        resp = pb.ModelInferResponse.FromString(infer(payload, timeout=10))
        out = resp.raw_output_contents[[o.name for o in resp.outputs].index("logits")]
        np.testing.assert_allclose(np.frombuffer(out, np.float32).reshape(logits.shape), logits, rtol=1e-4, atol=1e-4)
        benchmark.group = f"server {model}"
        benchmark(infer, payload, timeout=10)


@pytest.mark.parametrize("model", ["digits-mlp-nowait", "digits-mlp"])
def test_rest_infer(benchmark, bench_server, model):
    from inferline.demo_models import demo_package_path

    pixels, logits = _golden(demo_package_path("digits-mlp"))
    body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape),
                                   "data": pixels.ravel().tolist()}]}).encode()
    path = f"/v2/models/{model}/infer"
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", bench_server.http, timeout=10)

    def infer():
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise AssertionError(f"HTTP {resp.status}: {data[:200]!r}")
        return data

    try:
        answer = json.loads(infer())
        out = next(o for o in answer["outputs"] if o["name"] == "logits")
        np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(logits.shape), logits,
                                   rtol=1e-4, atol=1e-4)
        benchmark.group = f"server {model}"
        benchmark(infer)
    finally:
        conn.close()
