"""Registry changes under load, through a gateway, with `deploy --watch` following the registry: a new
version's pool starts, a promotion moves the traffic, and the old version's pool goes after its grace
period, and no request fails on the way."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push
from inferline.ray.deploy import Deployer, PoolOptions
from inferline.ray.directory import directory

from server_fixtures import ServerProcess, with_config

pytestmark = pytest.mark.ray

ROW = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))["inputs/pixels"][:1]  # 16 rows


def listed() -> dict:
    return {pool: len(entries) for pool, entries in ray.get(directory().endpoints.remote()).items()}


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_new_version_promoted_under_load_drops_no_request(ray_head, tmp_path):
    from ray import serve

    from inferline.ray.deploy import APP_PREFIX, _serve_status
    for app in _serve_status().applications:  # the folder's other pools: not this test's
        if app.startswith(APP_PREFIX):
            serve.delete(app)
    repo = str(tmp_path / "repo")
    registry = open_registry(repo)
    push(registry, demo_package_path("digits-logreg"))
    deployer = Deployer(open_registry(repo), repo, PoolOptions(drain_seconds=0.5, health_check_period_s=1.0),
                        grace_s=3.0)
    stop_watch = threading.Event()
    reports: list = []
    watcher = threading.Thread(target=deployer.watch, kwargs=dict(
        poll_interval_s=0.5, until=lambda r: stop_watch.is_set(), on_report=reports.append), daemon=True)
    watcher.start()
    wait_until(lambda: listed().get("digits-logreg:1") == 1, 90, "the v1 pool")
    gateway = ServerProcess(repo, "--ray", ray_head.address, "--inference-log", "off")
    answers, stop = [], threading.Event()

    def caller():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gateway.grpc}")
        x = grpcclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(ROW)
        while not stop.is_set():
            try:
                answers.append((time.monotonic(), client.infer("digits-logreg", [x], client_timeout=10)
                                .as_numpy("logits").tobytes()))
            except Exception as e:
                answers.append((time.monotonic(), e))
            time.sleep(0.005)
        client.close()

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(3)]
    try:
        for c in callers:
            c.start()
        mlp = shutil.copytree(demo_package_path("digits-mlp"), tmp_path / "mlp")
        with_config(str(mlp), name="digits-logreg", fallback=None)
        push(registry, str(mlp), name="digits-logreg", live=False)  # v2, staged: no pool yet
        registry.set_state("digits-logreg", 2, "canary")  # a canary: its pool starts
        wait_until(lambda: listed().get("digits-logreg:2") == 1, 90, "the v2 pool")
        time.sleep(3.0)  # the gateway loads v2's forwarder at its next registry poll
        promoted = time.monotonic()
        registry.promote("digits-logreg", 2)  # v1 retired: its pool goes after the grace period
        wait_until(lambda: "digits-logreg:1" not in listed(), 60, "the v1 pool to go")
        gone = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for c in callers:
            c.join(30)
        stop_watch.set()
        watcher.join(30)
        gateway.stop()
        registry.close()
    failed = [a for a in answers if not isinstance(a[1], bytes)]
    before = {a[1] for a in answers if isinstance(a[1], bytes) and a[0] < promoted}
    after = {a[1] for a in answers if isinstance(a[1], bytes) and a[0] > gone}
    print(f"\npromotion under load: {len(answers)} calls, {len(failed)} failed; the v1 pool went "
          f"{gone - promoted:.1f} s after the promotion")
    assert failed == [], [f"{type(e).__name__}: {e}" for e in failed[:3]]  # the status and message
    assert len(before) == 1 and len(after) == 1 and before != after  # v1's answer, then v2's only
    assert any("digits-logreg:1" in r.get("removed", []) or "inferline-digits-logreg-v1" in r.get("removed", [])
               for r in reports), reports[-3:]
