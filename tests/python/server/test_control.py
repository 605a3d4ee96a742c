"""The control listener (--metrics-port): health probes on a thread and event loop of their own.

Shown here: probes are answered while the inference loop is blocked (the REST port's own probe
waits for the block to end); the listener serves health and readiness only; readiness follows
the drain window while liveness stays true; a taken metrics port is "address in use"."""

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from inferline.server.control import start_control
from inferline.server.rest import start_rest
from inferline.server.settings import ServerSettings
from server_fixtures import ServerProcess, ServerThread, free_port, make_repository, serve_once


def get(port: int, path: str, timeout: float = 10.0) -> tuple:
    """(status, JSON body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_probes_answer_while_the_inference_loop_is_blocked(tmp_path):
    settings = ServerSettings(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0)
    with ServerThread(make_repository(tmp_path), [start_rest, start_control], settings) as srv:
        rest_port, control_port = srv.ports
        blocked, released = threading.Event(), threading.Event()

        def block_the_loop():  # stands for a backlog of inference work on the frontends' loop
            blocked.set()
            time.sleep(2.0)
            released.set()

        srv.loop.call_soon_threadsafe(block_the_loop)
        assert blocked.wait(10)
        rest_probe: dict = {}
        waiting = threading.Thread(target=lambda: rest_probe.update(answer=get(rest_port, "/v2/health/live")))
        waiting.start()
        assert get(control_port, "/v2/health/live") == (200, {"live": True})
        assert get(control_port, "/v2/health/ready") == (200, {"ready": True})
        assert get(control_port, "/v2/models/digits-mlp/ready") == (200, {"name": "digits-mlp", "ready": True})
        assert not released.is_set(), "the control port answered only after the inference loop was free again"
        waiting.join(20)
        assert rest_probe["answer"] == (200, {"live": True}) and released.is_set()  # the REST port waited its turn


def test_control_port_serves_probes_only_and_follows_the_drain(repo):
    server = ServerProcess(repo, "--drain-seconds", "3")
    try:
        banner = next(line for line in server.lines if "models ready" in line)
        assert f"health http://127.0.0.1:{server.control}/v2/health" in banner
        assert get(server.control, "/v2/health/ready") == (200, {"ready": True})
        assert get(server.control, "/v2/models/digits-logreg/versions/1/ready")[0] == 200
        status, body = get(server.control, "/v2/models/no-such-model/ready")
        assert status == 404 and "no-such-model" in body["error"]
        status, body = get(server.control, "/v2/models/digits-mlp")  # metadata, inference: the REST port's
        assert status == 404 and body == {"error": "no endpoint GET /v2/models/digits-mlp"}
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(lambda: any("still accepting for 3 s" in line for line in server.lines), 10)
        assert get(server.control, "/v2/health/ready") == (503, {"ready": False})
        assert get(server.control, "/v2/health/live") == (200, {"live": True})
        status, body = get(server.control, "/v2/models/digits-mlp/ready")
        assert status == 503 and body["reason"] == "the server is shutting down"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_metrics_port_is_address_in_use(repo, workers):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = serve_once(repo, "--metrics-port", str(port), "--workers", str(workers),
                         "--http-port", str(free_port()), "--grpc-port", str(free_port()))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"metrics port {port} on 127.0.0.1: address in use" in out.stderr and "Traceback" not in out.stderr

