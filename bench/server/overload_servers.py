"""The servers of bench_overload.py: `inferline serve` and KServe's model server on the same model,
started, checked against the golden logits, and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"
KSERVE_HINT = ("python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve onnxruntime, "
               "then --kserve-python /tmp/kserve-venv/bin/python")


KSERVE_MODEL = '''\
"""The bench's model as a kserve.Model: onnxruntime (1 intra-op, 1 inter-op thread), standardised as
inferline's preprocessing does (NaN -> nan_fill, (x - mean) / std, clip), v2 gRPC. Written by
bench/server/bench_overload.py; configured by the environment (OVERLOAD_*)."""
import json
import logging
import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxDigits(Model):
    def __init__(self, name, model_dir):
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self):
        with open(os.path.join(self.model_dir, "model.json"), encoding="utf-8") as f:
            pre = json.load(f)["preprocessing"]["pixels"]
        self.mean = np.asarray(pre["mean"], np.float32)
        self.std = np.asarray(pre["std"], np.float32)
        self.nan_fill = float(pre.get("nan_fill", 0.0))
        self.lo, self.hi = float(pre.get("clip_lo", -np.inf)), float(pre.get("clip_hi", np.inf))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(self.model_dir, "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.get_input_by_name("pixels").as_numpy().astype(np.float32, copy=False)
        x = np.clip((np.nan_to_num(x, nan=self.nan_fill) - self.mean) / self.std, self.lo, self.hi)
        logits, label = self.session.run(None, {"pixels": x.astype(np.float32, copy=False)})
        outputs = [InferOutput("logits", list(logits.shape), "FP32"), InferOutput("label", list(label.shape), "INT64")]
        outputs[0].set_data_from_numpy(logits)
        outputs[1].set_data_from_numpy(label)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    server = ModelServer(grpc_port=int(os.environ["OVERLOAD_GRPC_PORT"]),
                         http_port=int(os.environ["OVERLOAD_HTTP_PORT"]), enable_latency_logging=False,
                         grace_period=5)
    logging.getLogger("kserve").setLevel(logging.WARNING)  # its gRPC interceptor logs every call at INFO
    server.start([OnnxDigits(os.environ["OVERLOAD_MODEL_NAME"], os.environ["OVERLOAD_MODEL_DIR"])])
'''


def golden_payloads(package: str, model: str):
    """ModelInferRequest bytes for each golden row of the package, and the golden logits."""
    from inferline.server.proto import inference_pb2 as pb

    golden = np.load(os.path.join(package, "golden.npz"))
    payloads = []
    for row in golden["inputs/pixels"]:
        req = pb.ModelInferRequest(model_name=model)
        req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        req.raw_input_contents.append(np.ascontiguousarray(row[None], np.float32).tobytes())
        payloads.append(req.SerializeToString())
    return payloads, golden["outputs/logits"]


def wait_and_check(name, port, proc, payloads, logits, log_path, timeout_s=180.0):
    """Wait until the server answers ModelInfer, then check its logits on every golden row."""
    import grpc
    from inferline.server.proto import inference_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
            try:
                infer(payloads[0], timeout=2.0)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer within {timeout_s:.0f} s; see {log_path}")
                time.sleep(0.25)
        diff = 0.0
        for payload, want in zip(payloads, logits):
            resp = pb.ModelInferResponse.FromString(infer(payload, timeout=5.0))
            i = [o.name for o in resp.outputs].index("logits")
            diff = max(diff, float(np.abs(np.frombuffer(resp.raw_output_contents[i], np.float32) - want).max()))
    print(f"server={name} ready; golden logits max abs diff {diff:.2e} over {len(payloads)} rows", flush=True)
    if diff > 1e-3:
        raise RuntimeError(f"{name} does not compute the golden logits (max abs diff {diff})")


def start_server(name, workdir, package, kserve_python=None, cpus=None, server_args=()):
    """(Popen, grpc port, probe port, log path) of inferline serve (probe: its control listener), or of
    the KServe model server (probe: its REST port)."""
    from bench_grpc import free_port

    http, grpc_port, control = free_port(), free_port(), free_port()
    log_path = os.path.join(workdir, f"{name}.log")
    env = dict(os.environ)
    if name == "inferline":
        cmd = [sys.executable, "-m", "inferline", "serve", "--repository", os.path.join(workdir, "repo"),
               "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(control),
               "--drain-seconds", "0", *server_args]
    else:
        script = os.path.join(workdir, "kserve_model.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(KSERVE_MODEL)
        cmd = [kserve_python, script]
        env.update(OVERLOAD_GRPC_PORT=str(grpc_port), OVERLOAD_HTTP_PORT=str(http),
                   OVERLOAD_MODEL_DIR=package, OVERLOAD_MODEL_NAME=os.path.basename(package))
        env.pop("PYTHONPATH", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)  # before it starts threads or children: they inherit it
    return proc, grpc_port, control if name == "inferline" else http, log_path


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kserve_problem(kserve_python):
    """None if `kserve_python` can import kserve and onnxruntime, else why KServe is skipped."""
    if not kserve_python:
        return "no --kserve-python given"
    try:
        subprocess.run([kserve_python, "-c", "import kserve, onnxruntime"], check=True, capture_output=True,
                       timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{kserve_python} cannot import kserve and onnxruntime ({type(e).__name__})"
    return None
