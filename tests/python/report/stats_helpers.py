"""A real `inferline serve` under a little steady load, for the `inferline stats` tests."""

from __future__ import annotations

import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import external_tool
from server_fixtures import ServerProcess, make_repository


def tool(name: str, install: str) -> str:
    """Path of an external program (helpers.external_tool): skip without it, fail in CI."""
    return external_tool(name, install)


class Load:
    """One gRPC client sending digits-mlp requests back to back (a few ms apart) until stopped."""

    def __init__(self, server: ServerProcess, pause_s: float = 0.002):
        self.sent = 0
        self.latencies: list = []
        self._stop = threading.Event()
        self._client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        self._pause_s = pause_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self):
        rng = np.random.default_rng(11)
        while not self._stop.is_set():
            x = grpcclient.InferInput("pixels", [1, 64], "FP32")
            x.set_data_from_numpy(rng.random((1, 64), dtype=np.float32))
            t0 = time.perf_counter()
            self._client.infer("digits-mlp", [x])
            self.latencies.append(time.perf_counter() - t0)
            self.sent += 1
            time.sleep(self._pause_s)

    def rate(self) -> float:
        return self.sent / (time.monotonic() - self.started)

    def stop(self):
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def serve(tmp_path) -> ServerProcess:
    return ServerProcess(make_repository(tmp_path))
