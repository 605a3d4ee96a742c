"""The servers of compare_frontends.py, each started on free ports for its turn, checked with a
real gRPC client before any load, and stopped:

- noop: bench/cpp/noop_grpc_server.cpp (grpc++ generic callback API, echoes every request
  message), built here with g++ -O2 into build/bench-native/ (not through CMake);
- native / python: `inferline serve --frontend native|python` (1 worker, fresh temp HOME) on a
  temp repository holding digits-mlp's model.onnx pushed bare, as compare_servers_lib.py pushes it
  (serving defaults: onnxruntime with 1 thread, spinning off, max batch 32);
- kserve: compare_servers_lib.py's KServe model server (its venv, its kserve.Model on the same
  model.onnx; 1 worker, no batching).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))  # bench/: compare_servers_lib
import compare_servers_lib as lib  # noqa: E402

from h2load_lib import STREAM, UNARY  # noqa: E402

NOOP_SOURCE = os.path.join(ROOT, "bench", "cpp", "noop_grpc_server.cpp")
SERVERS = ("noop", "native", "python", "kserve")


# ---- what this installation offers ---------------------------------------------------------
def frontend_flag() -> bool:
    """Whether `inferline serve` has --frontend."""
    out = subprocess.run([sys.executable, "-m", "inferline", "serve", "--help"], capture_output=True, text=True,
                         timeout=120)
    return "--frontend" in out.stdout


def native_missing() -> str:
    """'' when `inferline serve --frontend native` can run here, else why not."""
    if not frontend_flag():
        return "`inferline serve --help` has no --frontend flag"
    import inferline._core as core

    reason = getattr(core, "NATIVE_FRONTEND", "inferline._core has no NATIVE_FRONTEND")
    return reason or ""


def grpcpp_version() -> str:
    out = subprocess.run(["pkg-config", "--modversion", "grpc++"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# ---- the no-op C++ server ------------------------------------------------------------------
def build_noop(build_dir: str) -> str:
    """build_dir/noop_grpc_server, compiled when missing or older than its source."""
    binary = os.path.join(build_dir, "noop_grpc_server")
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(NOOP_SOURCE):
        return binary
    os.makedirs(build_dir, exist_ok=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
    if flags.returncode != 0:
        raise RuntimeError("pkg-config finds no grpc++ (Debian/Ubuntu: apt-get install libgrpc++-dev)")
    cmd = ["g++", "-O2", "-std=c++17", NOOP_SOURCE, "-o", binary + ".tmp", *flags.stdout.split()]
    print("building " + " ".join(cmd[:6]) + " $(pkg-config --cflags --libs grpc++)", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building {NOOP_SOURCE} failed:\n{done.stderr[-3000:]}")
    os.replace(binary + ".tmp", binary)
    return binary


def _start_noop(binary: str, workdir: str) -> lib.Server:
    log_path = os.path.join(workdir, "noop.log")
    log = open(log_path, "w+")
    proc = subprocess.Popen([binary, "--address", "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r"port=(\d+)", log.read())
        if m:
            return lib.Server("noop", proc, int(m.group(1)), 0, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"noop_grpc_server did not start; see {log_path}")


# ---- inferline -----------------------------------------------------------------------------
def _start_inferline(frontend: str, workdir: str, model_path: str, with_flag: bool) -> lib.Server:
    """`inferline serve` (1 worker) with a HOME of its own and a repository holding the bare .onnx."""
    from inferline.models.service import open_registry, push

    name = frontend
    home = os.path.join(workdir, f"home-{name}")
    repo = os.path.join(home, "repository")
    os.makedirs(home, exist_ok=True)
    registry = open_registry(repo)
    push(registry, model_path, name=lib.MODEL)  # bare .onnx: the serving defaults apply
    registry.close()
    grpc_port, http_port, metrics_port = lib.free_ports(3)
    cmd = [sys.executable, "-m", "inferline", "serve", "--repository", repo, "--http-port", str(http_port),
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--drain-seconds", "0"]
    if with_flag:
        cmd += ["--frontend", frontend]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERLINE_")}
    env["HOME"] = home
    log_path = os.path.join(workdir, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)
    return lib.Server(name, proc, grpc_port, http_port, log_path)


def start(name: str, workdir: str, model_path: str, pythons: dict, noop_binary: str = None,
          with_flag: bool = False) -> lib.Server:
    if name == "noop":
        return _start_noop(noop_binary, workdir)
    if name in ("native", "python"):
        return _start_inferline(name, workdir, model_path, with_flag)
    if name == "kserve":
        return lib.start("kserve", workdir, model_path, pythons)
    raise ValueError(f"unknown server {name!r}")


# ---- checks with a real gRPC client ------------------------------------------------------------
def _ident(b):
    return b


def _logits(resp) -> np.ndarray:
    i = [o.name for o in resp.outputs].index("logits")
    return np.frombuffer(resp.raw_output_contents[i], np.float32)


def wait_ready(server: lib.Server, payloads, logits) -> None:
    """Until the server answers; then the golden rows (lib.wait_and_check) for the model servers."""
    if server.name == "noop":
        lib.wait_port(server.grpc_port)
        return
    lib.wait_and_check(server.name, server.grpc_port, server.proc, payloads, logits, server.log_path)


def check_unary(server: lib.Server, payload: bytes, want_logits) -> int:
    """One ModelInfer with the benchmark's exact bytes: an OK answer, right for this server (its
    request echoed by the no-op, the golden logits otherwise). Returns the answer's framed length."""
    import grpc
    from inferline.server.proto import inference_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        answer = channel.unary_unary(UNARY, request_serializer=_ident, response_deserializer=_ident)(
            payload, timeout=10)
    if server.name == "noop":
        if answer != payload:
            raise RuntimeError("the no-op server did not echo the request")
    else:
        got = _logits(pb.ModelInferResponse.FromString(answer))
        if np.abs(got - want_logits).max() > 1e-3:
            raise RuntimeError(f"{server.name} answered wrong logits for the benchmark row")
    return len(answer) + 5


def check_stream(server: lib.Server, payload: bytes, k: int, want_logits) -> int:
    """One ModelStreamInfer carrying k copies of the payload: k answers, none an error, each right.
    Returns an answer's framed length (they are all the same length)."""
    import grpc
    from inferline.server.proto import inference_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = channel.stream_stream(STREAM, request_serializer=_ident, response_deserializer=_ident)
        answers = list(call(iter([payload] * k), timeout=30))
    if len(answers) != k:
        raise RuntimeError(f"{server.name}: {len(answers)} stream answers for {k} requests")
    if len({len(a) for a in answers}) != 1:
        raise RuntimeError(f"{server.name}: stream answers of different lengths {sorted({len(a) for a in answers})}")
    for a in answers:
        if server.name == "noop":
            if a != payload:
                raise RuntimeError("the no-op server did not echo a streamed request")
            continue
        msg = pb.ModelStreamInferResponse.FromString(a)
        if msg.error_message:
            raise RuntimeError(f"{server.name}: stream answer error: {msg.error_message}")
        if np.abs(_logits(msg.infer_response) - want_logits).max() > 1e-3:
            raise RuntimeError(f"{server.name}: a stream answer has wrong logits")
    return len(answers[0]) + 5
