"""The servers of compare_servers.py: each in its own virtual environment (made here, under a cache
dir), each serving the same ONNX file with onnxruntime on the CPU, 1 intra-op and 1 inter-op
thread, thread-pool spinning off, started on free ports and checked against onnxruntime's own
answers before any load.

- inferline: `inferline serve` of this installation, the .onnx pushed bare (its serving defaults:
  1 thread, spinning off, max batch 32, 5 ms window);
- kserve: KServe's Python model server (`kserve.Model` + `ModelServer`, v2 gRPC; one worker, no
  batching: KServe's batcher is in its agent sidecar, not in the model server);
- mlserver / mlserver-inproc: Seldon MLServer with a custom `MLModel` runtime (MLServer ships no
  ONNX runtime), adaptive batching on (max_batch_size 32, max_batch_time 5 ms, as inferline's
  window); `mlserver` keeps MLServer's default of one parallel inference worker process,
  `mlserver-inproc` runs inference in the server process (parallel_workers 0);
- noop: a grpc.aio server answering a fixed response (bench/server/bench_grpc.py's floor).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import venv
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "server"))
from bench_grpc import noop_server, wait_port  # noqa: E402
from overload_servers import stop_server, wait_and_check  # noqa: E402

MODEL = "digits-mlp"
INFERLINE_BATCHING = None
"""None: inferline serves the .onnx pushed bare (its serving defaults); else a package of it with
this `batching` section (compare_servers.py sets it for heavy-mlp)."""
VENVS = {  # name -> what pip installs there (MLServer 1.7 breaks with uvloop 0.22)
    "kserve": ["kserve>=0.21,<1", "onnxruntime>=1.17,<2"],
    "mlserver": ["mlserver>=1.7,<1.8", "uvloop<0.22", "onnxruntime>=1.17,<2"],
}
VERSIONS = {"kserve": ["kserve", "onnxruntime", "grpcio"], "mlserver": ["mlserver", "onnxruntime", "grpcio", "uvloop"]}

_SESSION = '''
def make_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
'''

KSERVE_MODEL = '''\
"""A bare ONNX model as a kserve.Model (written by bench/compare_servers.py; COMPARE_* env)."""
import logging
import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
''' + _SESSION + '''

class Onnx(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.session = make_session(path)
        self.ready = True

    def get_input_types(self):  # the model metadata (inferline bench reads it)
        return [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]

    def get_output_types(self):
        return [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "label", "datatype": "INT64", "shape": [-1, 1]}]

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.get_input_by_name("pixels").as_numpy().astype(np.float32, copy=False)
        logits, label = self.session.run(None, {"pixels": x})
        outputs = [InferOutput("logits", list(logits.shape), "FP32"), InferOutput("label", list(label.shape), "INT64")]
        outputs[0].set_data_from_numpy(logits)
        outputs[1].set_data_from_numpy(label)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    server = ModelServer(grpc_port=int(os.environ["COMPARE_GRPC_PORT"]), http_port=int(os.environ["COMPARE_HTTP_PORT"]),
                         enable_latency_logging=False, grace_period=5)
    logging.getLogger("kserve").setLevel(logging.WARNING)  # its gRPC interceptor logs every call at INFO
    server.start([Onnx(os.environ["COMPARE_MODEL_NAME"], os.environ["COMPARE_MODEL_PATH"])])
'''

MLSERVER_RUNTIME = '''\
"""A bare ONNX model as an MLServer runtime (written by bench/compare_servers.py)."""
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
''' + _SESSION + '''

class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self.session = make_session(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        logits, label = self.session.run(None, {"pixels": x})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits),
                                                                NumpyCodec.encode_output("label", label)])
'''


def ensure_venv(cache_dir: str, name: str) -> str:
    """The python of venv `name` under cache_dir, created and installed on first use."""
    root = os.path.join(cache_dir, name)
    python = os.path.join(root, "bin", "python")
    stamp = os.path.join(root, "installed.json")
    spec = VENVS[name]
    if os.path.exists(stamp):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == spec:
                return python
    print(f"installing {name} into {root}: pip install {' '.join(spec)} (a few minutes, once)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    with open(os.path.join(root, "pip.log"), "w") as log:
        done = subprocess.run([python, "-m", "pip", "install", *spec], stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pip install into {root} failed; see {root}/pip.log")
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    return python


def versions(python: str, packages) -> dict:
    code = ("import importlib.metadata as m, json, sys; "
            f"print(json.dumps({{p: m.version(p) for p in {list(packages)!r}}}))")
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def reference(model_path: str, golden: str):
    """(ModelInferRequest bytes per golden row, onnxruntime's logits for them): raw pixels, no
    preprocessing, as every server here serves the bare graph."""
    import onnxruntime as ort
    from inferline.server.proto import inference_pb2 as pb

    pixels = np.load(golden)["inputs/pixels"].astype(np.float32)
    logits = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).run(["logits"], {"pixels": pixels})[0]
    payloads = []
    for row in pixels:
        req = pb.ModelInferRequest(model_name=MODEL)
        req.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        req.raw_input_contents.append(row[None].tobytes())
        payloads.append(req.SerializeToString())
    return payloads, logits


@dataclass
class Server:
    name: str
    proc: object  # subprocess.Popen, or a multiprocessing Process (noop)
    grpc_port: int
    http_port: int
    log_path: str
    versions: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if isinstance(self.proc, subprocess.Popen):
            stop_server(self.proc)
        else:
            self.proc.terminate()
            self.proc.join(10)


def free_ports(n: int) -> list:
    """n distinct TCP ports free a moment ago (held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _popen(cmd, log_path, env, cwd):
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def package_of(model_path: str, workdir: str) -> str:
    """A package of the digits-signature graph at model_path: the bare push's serving defaults
    (onnxruntime, 1 thread, no spinning) with INFERLINE_BATCHING."""
    import shutil

    folder = os.path.join(workdir, "inferline-package")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(model_path, os.path.join(folder, "model.onnx"))
    config = {"name": MODEL, "inputs": [{"name": "pixels", "dtype": "float32", "shape": [-1, 64]}],
              "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]},
                          {"name": "label", "dtype": "int64", "shape": [-1, 1]}],
              "backend": {"name": "onnxruntime", "threads": 1}, "batching": INFERLINE_BATCHING}
    with open(os.path.join(folder, "model.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder


STREAM = "-stream"
"""A server name ending so ("inferline-stream", "noop-stream") is that server driven over
ModelStreamInfer instead of unary ModelInfer."""


def start(name: str, workdir: str, model_path: str, pythons: dict) -> Server:
    """Starts server `name` (see the module docstring) on free ports; returns at once."""
    if name.endswith(STREAM):
        server = start(name[:-len(STREAM)], workdir, model_path, pythons)
        server.name = name
        return server
    grpc_port, http_port, metrics_port = free_ports(3)
    log_path = os.path.join(workdir, f"{name}.log")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if name == "noop":
        proc = mp.get_context("spawn").Process(target=noop_server, args=(grpc_port,), daemon=True)
        proc.start()
        return Server(name, proc, grpc_port, 0, log_path)
    if name == "inferline":
        from inferline.models.service import open_registry, push

        repo = os.path.join(workdir, "inferline-repo")
        registry = open_registry(repo)
        push(registry, package_of(model_path, workdir) if INFERLINE_BATCHING else model_path, name=MODEL)
        registry.close()
        cmd = [sys.executable, "-m", "inferline", "serve", "--repository", repo, "--http-port", str(http_port),
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--drain-seconds", "0"]
        return Server(name, _popen(cmd, log_path, dict(os.environ), workdir), grpc_port, http_port, log_path)
    if name == "kserve":
        script = os.path.join(workdir, "kserve_model.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(KSERVE_MODEL)
        env.update(COMPARE_GRPC_PORT=str(grpc_port), COMPARE_HTTP_PORT=str(http_port), COMPARE_MODEL_NAME=MODEL,
                   COMPARE_MODEL_PATH=model_path)
        return Server(name, _popen([pythons["kserve"], script], log_path, env, workdir), grpc_port, http_port,
                      log_path)
    if name in ("mlserver", "mlserver-inproc"):
        folder = os.path.join(workdir, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "onnx_runtime.py"), "w", encoding="utf-8") as f:
            f.write(MLSERVER_RUNTIME)
        settings = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "debug": False}
        if name == "mlserver-inproc":
            settings["parallel_workers"] = 0
        model = {"name": MODEL, "implementation": "onnx_runtime.OnnxRuntime", "parameters": {"uri": model_path},
                 "max_batch_size": 32, "max_batch_time": 0.005,
                 "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
                 "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                             {"name": "label", "datatype": "INT64", "shape": [-1, 1]}]}
        for file, data in (("settings.json", settings), ("model-settings.json", model)):
            with open(os.path.join(folder, file), "w", encoding="utf-8") as f:
                json.dump(data, f)
        mlserver = os.path.join(os.path.dirname(pythons["mlserver"]), "mlserver")
        return Server(name, _popen([mlserver, "start", folder], log_path, env, folder), grpc_port, http_port,
                      log_path)
    raise ValueError(f"unknown server {name!r}")


def wait_ready(server: Server, payloads, logits) -> None:
    """Until the server answers ModelInfer; then its logits on every golden row (not for noop)."""
    if server.name.startswith("noop"):
        wait_port(server.grpc_port)
        return
    wait_and_check(server.name, server.grpc_port, server.proc, payloads, logits, server.log_path)
