"""The README's "Scaling out" commands, run as written against this folder's Ray head.

Three substitutions, as in tests/python/test_readme.py: the cluster is the fixture's (found through
RAY_ADDRESS, which is what `auto` reads) rather than a new `ray start --head`, the registry is a
private one (`--repository`), and the gateway's ports are free ones."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push

from helpers import child_command
from server_fixtures import free_port

pytestmark = pytest.mark.ray

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


def scaling_block() -> list:
    """The commands of the README's sh block with `inferline ray deploy` (comments dropped)."""
    with open(README, encoding="utf-8") as f:
        blocks = [b for b in re.findall(r"```sh\n(.*?)```", f.read(), flags=re.S) if "inferline ray deploy" in b]
    assert len(blocks) == 1, "expected one sh block with `inferline ray deploy` in the README"
    return [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.split("#")[0].strip()]


def test_the_scaling_out_commands_work_as_written(ray_head, tmp_path):
    commands = scaling_block()
    assert commands == ["pip install 'inferline[ray]'", "ray start --head",
                        "inferline ray deploy --replicas 2 --watch &", "inferline serve --ray auto",
                        "inferline ray status"], commands
    from ray import serve

    from inferline.ray.deploy import APP_PREFIX, _serve_status
    for app in _serve_status().applications:  # the folder's earlier pools (another registry's): gone first
        if app.startswith(APP_PREFIX):
            serve.delete(app)
    repo = str(tmp_path / "repo")
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    registry.close()
    env = {**os.environ, "RAY_ADDRESS": ray_head.address, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "inferline"]
    deploy = subprocess.Popen(child_command(cli + commands[2].rstrip(" &").split()[1:] + ["--repository", repo]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    grpc_port = free_port()
    gateway = subprocess.Popen(cli + commands[3].split()[1:] + ["--repository", repo, "--grpc-port", str(grpc_port),
                                                               "--http-port", str(free_port()), "--metrics-port",
                                                               str(free_port()), "--drain-seconds", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = grpcclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        deadline, label = time.time() + 120, None
        while time.time() < deadline and label is None:
            try:
                label = client.infer("digits-logreg", [x], client_timeout=5).as_numpy("label")
            except Exception:  # the pool is still starting, or the gateway has not found it yet
                time.sleep(0.5)
        client.close()
        assert label is not None and label.shape == (1, 1)
        deadline = time.time() + 60
        while True:  # both replicas listed (the first answer may come while the second still starts)
            status = subprocess.run(cli + commands[4].split()[1:], capture_output=True, text=True, env=env,
                                    timeout=120)
            assert status.returncode == 0, status.stdout + status.stderr
            if ("digits-logreg:1" in status.stdout and status.stdout.count("127.0.0.1:") >= 2) or \
                    time.time() > deadline:
                break
            time.sleep(1.0)
        assert "digits-logreg:1" in status.stdout and status.stdout.count("127.0.0.1:") >= 2, status.stdout
    finally:
        for p in (gateway, deploy):
            p.send_signal(signal.SIGINT)
        for p in (gateway, deploy):
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        from ray import serve
        serve.delete("inferline-digits-logreg-v1")
