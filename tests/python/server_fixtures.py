"""Helpers for server tests: a repository with test models, and a server running in a background thread.

    repo = make_repository(tmp_path, extra=[int64_model_path(tmp_path)])
    with ServerThread(repo, frontends=[start_grpc]) as srv:
        srv.ports[0]                         # where the first frontend listens
        srv.call(srv.dataplane.repository_unload("digits-mlp"))   # a coroutine, run on the server loop

The server (Engine, Router, ModelManager polling every 0.2 s, DataPlane, frontends) lives on
its own event loop in a thread, so tests can use blocking clients (tritonclient.grpc,
tritonclient.http) as well as asyncio ones.

The gRPC port has two frontends, the Python one and the native (C++) one; conformance tests run
against both: ``grpc_starter("native")`` is the native one's start function (a test skips where
this build lacks it, and fails under CI), and ``ServerProcess(..., frontend="native")`` passes
``--frontend native``. tests/python/server/conftest.py has the ``grpc_frontend`` fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferline import _core
from inferline.demo_models import demo_package_path
from inferline.engine import Engine
from inferline.models.service import open_registry, push
from inferline.routing import Router
from inferline.server.dataplane import DataPlane
from inferline.service.sync import ModelManager
from inferline.server.settings import ServerSettings

DEMO = ("digits-logreg", "digits-mlp")  # the fallback first: the MLP refers to it
GRPC_FRONTENDS = ("python", "native")


def require_native_frontend() -> None:
    """Skips the test where this build has no native gRPC frontend; under CI (env CI set), fails it."""
    reason = getattr(_core, "NATIVE_FRONTEND", "no _core.NATIVE_FRONTEND in this build")
    if reason:
        message = f"the native gRPC frontend is not built ({reason})"
        if os.environ.get("CI"):
            pytest.fail(message + " -- required in CI")
        pytest.skip(message)


def grpc_starter(frontend: str) -> Callable:
    """The start function (``start(dataplane, settings)``) of the gRPC frontend "python" or "native"."""
    if frontend == "native":
        require_native_frontend()
        from inferline.server.native import start_native_grpc
        return start_native_grpc
    from inferline.server.grpc_frontend import start_grpc
    return start_grpc


def make_repository(root, extra: Sequence = ()) -> str:
    """A registry directory under `root` with the demo models, then `extra` packages (path or (path, name))."""
    repo = os.path.join(str(root), "repository")
    registry = open_registry(repo)
    try:
        for name in DEMO:
            push(registry, demo_package_path(name))
        for item in extra:
            path, name = item if isinstance(item, tuple) else (item, None)
            push(registry, path, name=name)
    finally:
        registry.close()
    return repo


def _save(model: onnx.ModelProto, path: str) -> str:
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def int64_model_path(root) -> str:
    """A bare .onnx "int-sum": ids INT64 [-1, 4] -> total INT64 [-1, 1] (row sum), doubled INT64 [-1, 4]."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    two = numpy_helper.from_array(np.array(2, dtype=np.int64), "two")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["ids", "axes"], ["total"], keepdims=1),
         helper.make_node("Mul", ["ids", "two"], ["doubled"])],
        "int_sum",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.INT64, ["batch", 1]),
         helper.make_tensor_value_info("doubled", TensorProto.INT64, ["batch", 4])],
        initializer=[axes, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return _save(model, os.path.join(str(root), "int-sum.onnx"))


def slow_model_package(root, iterations: int = 60_000, queue_capacity: int = 1, fallback=None) -> str:
    """A package "slow": x FP32 [-1, 1] -> y = x, after an ONNX Loop of `iterations` 64x64 matmuls
    (about 1 us each); one row per batch and a tiny queue, so that it is easy to fill."""
    eye = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "w"], ["s_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, None)],
        initializer=[eye])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "ones"], ["s0"]),
         helper.make_node("Loop", ["n", "cond", "s0"], ["s1"], body=body),
         helper.make_node("ReduceMean", ["s1"], ["y"], keepdims=1, axes=[1])],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array(iterations, dtype=np.int64), "n"),
                     numpy_helper.from_array(np.array(True), "cond"),
                     numpy_helper.from_array(np.ones((1, 64), np.float32), "ones")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pkg = os.path.join(str(root), "slow")
    os.makedirs(pkg, exist_ok=True)
    _save(model, os.path.join(pkg, "model.onnx"))
    config = {"name": "slow", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 1]}],
              "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}],
              "backend": {"name": "onnxruntime", "threads": 1},
              "batching": {"max_batch_size": 1, "max_queue_delay_us": 0},
              "queue_capacity": queue_capacity, "priority_levels": 1}
    if fallback:
        config["fallback"] = fallback
    with open(os.path.join(pkg, "model.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return pkg


def flaky_package(root, name: str = "flaky", fallback=None, max_batch: int = 8, **extra) -> str:
    """A package `name`: x FP32 [-1, 4] -> y FP32 [-1, 4] = row x[0] (as an index) of a 10x4 table.
    A row whose x[0] is 99 is out of the table: ONNX Runtime fails the batch, and the core's
    halving isolates exactly those rows (FLAG marks them)."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s0", "s1", "s_axis"], ["x0"]),
         helper.make_node("Cast", ["x0"], ["idx2"], to=TensorProto.INT64),
         helper.make_node("Squeeze", ["idx2", "s_axis"], ["idx"]),
         helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[table, numpy_helper.from_array(np.array([0], np.int64), "s0"),
                     numpy_helper.from_array(np.array([1], np.int64), "s1"),
                     numpy_helper.from_array(np.array([1], np.int64), "s_axis")])
    return _package(root, name, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    fallback, max_batch, **extra)


FLAG = 99.0
"""x[0] of a row that the flaky model fails on."""


def steady_package(root, name: str = "steady", max_batch: int = 8, features: int = 4) -> str:
    """A package `name` with the flaky model's signature (or x [-1, features]) that always
    answers: y = x + 1000."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "k"], ["y"])], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[numpy_helper.from_array(np.array(1000.0, np.float32), "k")])
    return _package(root, name, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None,
                    max_batch, features=features)


def with_config(pkg: str, **sections) -> str:
    """`pkg` with `sections` merged into its model.json: new bytes, so a push makes a new version."""
    path = os.path.join(pkg, "model.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(sections)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return pkg


def _package(root, name, model, fallback, max_batch, features: int = 4, **extra) -> str:
    pkg = os.path.join(str(root), name)
    os.makedirs(pkg, exist_ok=True)
    _save(model, os.path.join(pkg, "model.onnx"))
    config = {"name": name, "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, features]}],
              "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, features]}],
              "backend": {"name": "onnxruntime", "threads": 1},
              "batching": {"max_batch_size": max_batch, "max_queue_delay_us": 1000}, **extra}
    if fallback:
        config["fallback"] = fallback
    with open(os.path.join(pkg, "model.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return pkg


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Engine + ModelManager + DataPlane + frontends on an event loop in a background thread."""

    def __init__(self, repository: str, frontends: Sequence[Callable], settings: Optional[ServerSettings] = None,
                 poll_interval_s: float = 0.2, inference_log: bool = False):
        """`inference_log`: start the settings' inference log before the frontends, as `inferline serve` does."""
        self.repository = repository
        self._inference_log = inference_log
        self.settings = settings or ServerSettings(host="127.0.0.1", grpc_port=0, http_port=0)
        self._starters = list(frontends)
        self._poll_interval_s = poll_interval_s
        self.loop = asyncio.new_event_loop()
        self.frontends: list = []
        self.ports: list = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        try:
            self.call(self._start(), timeout=120)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            try:
                self.call(self._stop(), timeout=60)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(30)
        self.loop.close()

    def grpc_admission(self) -> dict:
        """Admission state (``Admission.stats()``) of the gRPC frontend: the native frontend's own, else the
        data plane's (which the Python gRPC frontend shares with REST)."""
        for frontend in self.frontends:
            if hasattr(frontend, "admission"):
                return frontend.admission()
        return self.dataplane.admission.stats()

    def call(self, coro, timeout: float = 60):
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.engine = Engine()
        self.router = Router(self.engine)
        self.manager = ModelManager(self.engine, repository=self.repository, poll_interval_s=self._poll_interval_s,
                                    router=self.router)
        await self.manager.sync()
        self.dataplane = DataPlane.for_settings(self.manager, self.settings, router=self.router)
        if self._inference_log:
            from inferline import inferlog
            self.dataplane.inference_log = inferlog.for_server(self.settings, 0, self.manager.recorder)
        self._polling_stop = asyncio.Event()
        self._polling = asyncio.ensure_future(self.dataplane.poll(self._polling_stop))
        for start in self._starters:
            frontend = await start(self.dataplane, self.settings)
            self.frontends.append(frontend)
            self.ports.append(frontend.port)

    async def _stop(self) -> None:
        for frontend in self.frontends:
            await frontend.stop(1.0)
        if hasattr(self, "_polling"):
            self._polling_stop.set()
            await self._polling
        if self._inference_log and getattr(self, "dataplane", None) and self.dataplane.inference_log is not None:
            self.dataplane.inference_log.close()
        if hasattr(self, "manager"):
            self.manager.close()
        if hasattr(self, "engine"):
            self.engine.close()


def serve_once(repo, *args, env=None, timeout=60):
    """Runs `inferline serve ...` expecting it to exit by itself; returns the CompletedProcess."""
    metrics = () if "--metrics-port" in args else ("--metrics-port", str(free_port()))
    cmd = [sys.executable, "-m", "inferline", "serve", "--repository", str(repo), *metrics, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


class ServerProcess:
    """`inferline serve` on free ports; no drain window unless `extra` sets --drain-seconds."""

    def __init__(self, repo, *extra, workers=1, ports=None, env=None, frontend=None):
        """`frontend`: "python" or "native" (--frontend), None: the server's default."""
        if frontend == "native":
            require_native_frontend()
        extra = extra + (("--frontend", frontend) if frontend else ())
        self.http, self.grpc = ports or (free_port(), free_port())
        self.control = free_port()  # --metrics-port: the health probes' own listener
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        drain = () if "--drain-seconds" in extra else ("--drain-seconds", "0")
        cmd = [sys.executable, "-m", "inferline", "serve", "--repository", str(repo), "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.control), "--poll-interval", "0.2", "--workers", str(workers), *drain, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda: sum("models ready" in line for line in self.lines) >= workers, 60)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, cond, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            if self.proc.poll() is not None:
                raise AssertionError("server exited:\n" + "".join(self.lines))
            time.sleep(0.05)
        raise AssertionError("timed out; server output:\n" + "".join(self.lines))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(5)
        self.proc.stdout.close()
        return code
