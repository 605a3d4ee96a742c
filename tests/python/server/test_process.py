"""`inferline serve` as a real process: startup, hot loading, SIGTERM with requests in flight, --workers 2.

The tests that speak gRPC run with each gRPC frontend (``--frontend python`` and ``native``; the
``grpc_frontend`` fixture)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push
from inferline import _core
from helpers import process_exited
from server_fixtures import ServerProcess as Server, free_port, serve_once

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

GOLDEN = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))


def grpc_infer(client, rows, model="digits-mlp", version=""):
    inp = grpcclient.InferInput("pixels", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return client.infer(model, [inp], model_version=version)


def test_serve_prints_where_it_listens_and_answers(repo, grpc_frontend):
    server = Server(repo, frontend=grpc_frontend)
    try:
        banner = next(line for line in server.lines if "models ready" in line)
        assert f":{server.http}" in banner and f":{server.grpc}" in banner and "digits-mlp:1 (live)" in banner
        assert f"gRPC 127.0.0.1:{server.grpc} ({grpc_frontend} frontend)" in banner
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        result = grpc_infer(client, GOLDEN["inputs/pixels"])
        np.testing.assert_allclose(result.as_numpy("logits"), GOLDEN["outputs/logits"], rtol=1e-4, atol=1e-4)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
        assert http.is_server_ready() and http.is_model_ready("digits-logreg")
    finally:
        assert server.stop() == 0


def test_hot_load_after_push_without_failing_requests(repo, tmp_path, grpc_frontend):
    server = Server(repo, frontend=grpc_frontend)
    errors, answered, stop = [], [], threading.Event()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")

    def traffic():
        while not stop.is_set():
            try:
                answered.append(grpc_infer(client, GOLDEN["inputs/pixels"][:1]).get_response().model_version)
            except Exception as e:  # any failure during the swap is a bug
                errors.append(e)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        pkg = tmp_path / "v2"
        shutil.copytree(demo_package_path("digits-mlp"), pkg)
        data = json.loads((pkg / "model.json").read_text())
        data["batching"]["max_queue_delay_us"] = 1000
        (pkg / "model.json").write_text(json.dumps(data))
        out = subprocess.run([sys.executable, "-m", "inferline", "models", "push", str(pkg), "--live",
                              "--repository", str(repo)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "digits-mlp:2"
        server.wait_for(lambda: "2" in answered[-5:], 30)
        time.sleep(0.5)  # traffic keeps flowing after the swap; v1 is unloaded
    finally:
        stop.set()
        t.join()
        code = server.stop()
    assert errors == []
    assert answered[0] == "1" and answered[-1] == "2"
    assert code == 0


def test_failed_version_never_replaces_working_one(repo, tmp_path):
    server = Server(repo)
    try:
        registry = open_registry(str(repo))
        good = registry.get("digits-logreg")
        # a live version whose artifact is tampered with in the store: it fails to load
        pkg = tmp_path / "v2"
        shutil.copytree(demo_package_path("digits-logreg"), pkg)
        data = json.loads((pkg / "model.json").read_text())
        data["labels"]["note"] = "v2"
        (pkg / "model.json").write_text(json.dumps(data))
        rec = push(registry, str(pkg), live=True)
        path = os.path.join(registry.fetch(rec), "model.onnx")
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.write(b"garbage")
        server.wait_for(lambda: registry.get("digits-logreg", rec.version).failure is not None, 30)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        result = grpc_infer(client, GOLDEN["inputs/pixels"][:2], model="digits-logreg")
        assert result.get_response().model_version == str(good.version)
        assert client.is_model_ready("digits-logreg")
        registry.close()
    finally:
        assert server.stop() == 0


def test_sigterm_with_requests_in_flight_loses_none(repo, tmp_path, grpc_frontend):
    from server_fixtures import slow_model_package

    registry = open_registry(str(repo))
    push(registry, slow_model_package(tmp_path, iterations=20_000, queue_capacity=64))  # ~20 ms a row
    registry.close()
    server = Server(repo, frontend=grpc_frontend)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    results, errors = [], []

    def done(result, error):
        (errors if error else results).append(error or result)

    x = np.ones((1, 1), np.float32)
    inp = grpcclient.InferInput("x", [1, 1], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(30):
        client.async_infer("slow", [inp], callback=done)
    time.sleep(0.3)  # all 30 reached the server; most still wait in the model's queue
    in_flight = 30 - len(results)
    code = server.stop()
    deadline = time.time() + 10
    while len(results) + len(errors) < 30 and time.time() < deadline:
        time.sleep(0.05)
    assert code == 0
    assert in_flight > 5, "the test needs requests in flight at SIGTERM"
    assert errors == [] and len(results) == 30  # every request in flight was answered, none lost
    assert any("stopped" in line for line in server.lines)


def test_two_workers_share_the_ports(repo, grpc_frontend):
    server = Server(repo, workers=2, frontend=grpc_frontend)
    try:
        pids = {line.split("pid ")[1].split(")")[0] for line in server.lines if "models ready" in line}
        assert len(pids) == 2
        for _ in range(20):  # new connections are spread by the kernel; all must be served
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
            assert grpc_infer(client, GOLDEN["inputs/pixels"][:1]).as_numpy("label").shape == (1, 1)
            client.close()
            http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
            assert http.is_model_ready("digits-mlp")
            http.close()
    finally:
        assert server.stop() == 0
    assert sum("stopped" in line for line in server.lines) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_second_server_on_the_same_ports_fails_with_address_in_use(repo, workers, grpc_frontend):
    first = Server(repo, workers=workers, frontend=grpc_frontend)
    try:
        for ports in ((first.http, free_port()), (free_port(), first.grpc)):
            out = serve_once(repo, "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                             "--workers", str(workers), "--frontend", grpc_frontend)
            assert out.returncode == 1, out.stdout + out.stderr
            assert "address in use" in out.stderr and "Traceback" not in out.stderr
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{first.grpc}")  # the first one still serves
        assert grpc_infer(client, GOLDEN["inputs/pixels"][:1]).as_numpy("label").shape == (1, 1)
    finally:
        assert first.stop() == 0


def test_port_held_by_another_program_is_refused(repo):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        out = serve_once(repo, "--http-port", str(other.getsockname()[1]), "--grpc-port", str(free_port()))
    assert out.returncode == 1 and "address in use (another process listens there)" in out.stderr


def test_env_variables_are_named_after_the_flags(repo):
    """INFERLINE_POLL_INTERVAL (the flag is --poll-interval) is honoured; a bad value is one line; a typo warns."""
    http, grpc_port = free_port(), free_port()
    bad = serve_once(repo, env={"INFERLINE_POLL_INTERVAL": "soon", "INFERLINE_HTTP_PORT": str(http)})
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: INFERLINE_POLL_INTERVAL='soon': expected a number"
    server = Server(repo, ports=(http, grpc_port), env={"INFERLINE_POLL_INTERVAL": "0.3", "INFERLINE_POLL_INTERVL": "1"})
    try:
        assert any("unknown environment variable(s) INFERLINE_POLL_INTERVL" in line for line in server.lines)
    finally:
        assert server.stop() == 0
    flag = serve_once(repo, "--poll-interval", "soon")
    assert flag.returncode == 2 and "--poll-interval: expected a number, got 'soon'" in flag.stderr


def test_beyond_loopback_without_token_warns_and_refuses_control(repo, grpc_frontend):
    server = Server(repo, "--host", "0.0.0.0", frontend=grpc_frontend)
    try:
        assert any("beyond loopback) without --admin-token" in line for line in server.lines)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
        with pytest.raises(Exception) as e:
            http.unload_model("digits-mlp")
        assert "403" in str(e.value.status()) and "--admin-token" in e.value.message()
        grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        with pytest.raises(Exception) as e:
            grpc_client.unload_model("digits-mlp")
        assert e.value.status() == "StatusCode.PERMISSION_DENIED"
        assert http.is_model_ready("digits-mlp")  # inference keeps working; nothing was unloaded
        assert grpc_infer(grpc_client, GOLDEN["inputs/pixels"][:1]).as_numpy("label").shape == (1, 1)
    finally:
        assert server.stop() == 0


def test_sigterm_keeps_accepting_through_the_drain_window(repo, grpc_frontend):
    server = Server(repo, "--drain-seconds", "3", frontend=grpc_frontend)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for(lambda: any("still accepting for 3 s" in line for line in server.lines), 10)
    t0 = time.time()
    answered = 0
    while time.time() - t0 < 1.5:  # well inside the window: new requests are still answered
        assert not http.is_server_ready() and not client.is_server_ready() and client.is_server_live()
        assert grpc_infer(client, GOLDEN["inputs/pixels"][:1]).as_numpy("label").shape == (1, 1)
        answered += 1
    assert answered > 5
    assert server.stop() == 0
    assert time.time() - t0 >= 1.4
    with pytest.raises(Exception):  # after the window the listeners are closed
        grpc_infer(grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}"), GOLDEN["inputs/pixels"][:1])


def test_second_signal_skips_the_drain_window(repo):
    server = Server(repo, "--drain-seconds", "60")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for(lambda: any("still accepting" in line for line in server.lines), 10)
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(20)  # long before the 60 s window would end
    assert server.stop() == 0


def test_the_default_frontend_is_native_where_built_and_the_banner_says_which(repo):
    reason = _core.NATIVE_FRONTEND
    server = Server(repo)
    try:
        banner = next(line for line in server.lines if "models ready" in line)
        notes = [line for line in server.lines if line.startswith("note: gRPC is served by the Python frontend")]
    finally:
        assert server.stop() == 0
    if reason:  # this build has no native frontend: Python serves, and the server says why
        assert "(python frontend)" in banner and len(notes) == 1 and reason in notes[0]
        out = serve_once(repo, "--frontend", "native", "--grpc-port", str(free_port()))
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert out.stderr.strip() == f"error: --frontend native: {reason}"
    else:
        assert "(native frontend)" in banner and not notes
    python = Server(repo, env={"INFERLINE_FRONTEND": "python"})
    try:
        assert any("(python frontend)" in line for line in python.lines if "models ready" in line)
    finally:
        assert python.stop() == 0
    bad = serve_once(repo, "--frontend", "rust")
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --frontend rust: one of native, python"


def test_the_readme_says_how_to_see_which_frontend_is_built():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")
    with open(readme, encoding="utf-8") as f:
        block, = [b for b in re.findall(r"```sh\n(.*?)```", f.read(), flags=re.S) if "NATIVE_FRONTEND" in b]
    out = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == (_core.NATIVE_FRONTEND or "native gRPC frontend built")


# ---- INFERLINE_DIE_WITH_PARENT: the server a Ray replica starts dies with the replica ----------------
STARTER = """
import os, subprocess, sys, time
cmd = [sys.executable, "-m", "inferline", "serve", "--repository", sys.argv[1], "--host", "127.0.0.1",
       "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--ready-file", sys.argv[2],
       "--inference-log", "off"]
child = subprocess.Popen(cmd, env={**os.environ, "INFERLINE_DIE_WITH_PARENT": str(os.getpid())},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_server_told_to_die_with_its_parent_is_killed_with_it(repo, tmp_path):
    ready = tmp_path / "ready.json"
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(repo), str(ready)], stdout=subprocess.PIPE,
                               text=True)
    server_pid = int(starter.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and not process_exited(server_pid), "the server never became ready"
            time.sleep(0.05)
        starter.kill()
        starter.wait()
        deadline = time.monotonic() + 10
        while not process_exited(server_pid):
            assert time.monotonic() < deadline, "the server outlived the process that started it"
            time.sleep(0.05)
    finally:
        starter.kill()
        starter.wait()
        starter.stdout.close()
        if not process_exited(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_server_whose_named_parent_is_already_gone_exits_at_once(repo):
    env = {**os.environ, "INFERLINE_DIE_WITH_PARENT": "1"}  # init: not this server's parent
    done = subprocess.run([sys.executable, "-m", "inferline", "serve", "--repository", str(repo), "--grpc-port", "0",
                           "--http-port", "0", "--metrics-port", "0"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "the process that started this server (1) is gone" in done.stderr


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_a_die_with_parent_value_that_is_no_pid_is_a_clear_error(repo, value):
    env = {**os.environ, "INFERLINE_DIE_WITH_PARENT": value}
    done = subprocess.run([sys.executable, "-m", "inferline", "serve", "--repository", str(repo), "--grpc-port", "0",
                           "--http-port", "0", "--metrics-port", "0"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: INFERLINE_DIE_WITH_PARENT=") and "positive integer" in done.stderr
    assert "Traceback" not in done.stderr
