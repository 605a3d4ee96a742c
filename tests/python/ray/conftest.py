"""One real Ray head for the whole folder (Ray takes seconds to start), on free ports and a private
temp dir, with its own auth token, so that parallel runs do not meet. Teardown stops Serve (the
replicas drain their children), then the head, then SIGKILLs any process the head had started
that is still there: `ray stop` would also stop other people's clusters on the machine."""

from __future__ import annotations

import glob
import os
import secrets
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'inferline[ray]')")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'inferline[ray]')")


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _descendants(pid: int) -> set:
    """Every live process below `pid` (by walking /proc's parent links)."""
    children: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


class RayHead:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="ilray-", dir="/tmp")  # short: Ray's socket paths have a limit
        port, client, nm, om, metrics, agent, agent_grpc, rtenv = _free_ports(8)
        self.address = f"127.0.0.1:{port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0")
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        cmd = [ray_cli, "start", "--head", "--block", "--num-cpus", "8", "--port", str(port),
               "--disable-usage-stats", "--include-dashboard=false", "--temp-dir", os.path.join(self.tmp, "t"),
               "--ray-client-server-port", str(client), "--node-manager-port", str(nm),
               "--object-manager-port", str(om), "--metrics-export-port", str(metrics),
               "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(rtenv)]
        self.log = open(os.path.join(self.tmp, "head.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"ray start failed: {open(os.path.join(self.tmp, 'head.log')).read()[-2000:]}")
                time.sleep(0.2)
        self._saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")}
        os.environ.update({k: self.env[k] for k in self._saved})

    def stop(self) -> None:
        procs = _descendants(self.proc.pid)
        try:
            if ray.is_initialized():
                from ray import serve
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            procs |= _descendants(self.proc.pid)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
            for pid in procs | {self.proc.pid}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                self.proc.wait(timeout=10)
            self.log.close()
            for k, v in getattr(self, "_saved", {}).items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(self.tmp, ignore_errors=True)


LOGS_KEPT = "/tmp/inferline-ray-failures"
"""Where a failed test's Ray session logs are copied (the head's own temp dir goes at teardown)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def serve_logs_on_failure(request):
    """When a test here fails, prints the tail of Serve's controller log (shown with the failure)
    and keeps the session's logs under LOGS_KEPT: a stuck controller or replica leaves no other trace."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "ray_head" not in request.fixturenames:
        return
    head = request.getfixturevalue("ray_head")
    logs = os.path.join(head.tmp, "t", "session_latest", "logs")
    kept = os.path.join(LOGS_KEPT, f"{request.node.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copytree(logs, kept, dirs_exist_ok=True, ignore_dangling_symlinks=True)
    print(f"\nRay session logs kept in {kept}")
    for path in sorted(glob.glob(os.path.join(logs, "serve", "controller_*.log"))):
        with open(path, errors="replace") as f:
            tail = f.readlines()[-60:]
        print(f"--- last {len(tail)} lines of {os.path.basename(path)}\n" + "".join(tail))


@pytest.fixture(scope="session")
def ray_head():
    head = RayHead()
    try:
        from inferline.ray import connect
        connect(head.address)
        yield head
    finally:
        head.stop()
