"""Pools on a real Ray cluster (conftest.py: one head for the folder): endpoints in the directory,
bit-identical answers, a killed replica replaced, autoscaling on real load, `inferline ray status`,
idempotent deploys and the grace period. The tests run in file order and share the cluster and a
temp repository; each leaves the pool of digits-logreg:1 running for the next.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")
tc = pytest.importorskip("tritonclient.grpc")

from inferline.demo_models import demo_package_path  # noqa: E402
from inferline.models.service import push  # noqa: E402
from inferline.registry.store import Registry  # noqa: E402
from inferline.ray import app_name  # noqa: E402
from inferline.ray.directory import directory  # noqa: E402
from inferline.ray.autoscale import desired_replicas  # noqa: E402
from inferline.ray.deploy import Deployer, PoolOptions, _serve_status, wait_for_replicas, wanted_pools  # noqa: E402,E501

from helpers import child_command, process_exited  # noqa: E402
from server_fixtures import ServerProcess  # noqa: E402

POOL = "digits-logreg:1"
FAST = dict(num_cpus=0.5, drain_seconds=0.5, health_check_period_s=1.0)
"""Short drains and health checks: the tests wait on them."""


@pytest.fixture(scope="module")
def repo(ray_head):
    """A registry holding digits-logreg:1 only (live); tests add digits-mlp when they need it. The
    cluster is shared with the folder's other files: their pools go first, so this file starts clean."""
    from ray import serve

    from inferline.ray.deploy import APP_PREFIX, _serve_status

    for app in _serve_status().applications:
        if app.startswith(APP_PREFIX):
            serve.delete(app)
    wait_until(lambda: not ray.get(directory().endpoints.remote()), 30, "an empty directory")
    path = tempfile.mkdtemp(prefix="ilray-repo-")
    registry = Registry.open(path)
    push(registry, demo_package_path("digits-logreg"))
    yield path, registry
    registry.close()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(7).uniform(0, 16, size=(1, 64)).astype(np.float32)


def endpoints(pool=POOL) -> list:
    return ray.get(directory().endpoints.remote()).get(pool, [])


def infer(endpoint: str, x: np.ndarray) -> bytes:
    client = tc.InferenceServerClient(endpoint)
    try:
        inp = tc.InferInput("pixels", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("digits-logreg", [inp])
        return result.as_numpy("logits").tobytes() + result.as_numpy("label").tobytes()
    finally:
        client.close()


def wait_until(predicate, timeout_s: float, what: str, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)


def direct_answer(repo_path: str, x: np.ndarray) -> bytes:
    """The same version served by a plain `inferline serve` outside Ray."""
    tmp = tempfile.mkdtemp(prefix="ilray-direct-")
    ready = os.path.join(tmp, "ready.json")
    child = subprocess.Popen([sys.executable, "-m", "inferline", "serve", "--pin", POOL, "--repository", repo_path,
                              "--ready-file", ready, "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                              "--inference-log", "off", "--drain-seconds", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: os.path.exists(ready), 60, "the direct server")
        with open(ready) as f:
            port = json.load(f)["grpc_port"]
        return infer(f"127.0.0.1:{port}", x)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_replicas_listed_and_bit_identical(ray_head, repo, pixels):
    path, registry = repo
    deployer = Deployer(registry, path, PoolOptions(replicas=2, **FAST), grace_s=1.0)
    t0 = time.monotonic()
    report = deployer.sync()
    assert report["started"] == [POOL]
    listed = wait_for_replicas(deployer.starting_replicas(), timeout_s=60)[POOL]
    print(f"\n2 replicas listed {time.monotonic() - t0:.1f} s after deploy: {[e['endpoint'] for e in listed]}")
    assert len(listed) == 2 and len({e["endpoint"] for e in listed}) == 2
    want = direct_answer(path, pixels)
    for e in listed:
        assert infer(e["endpoint"], pixels) == want, e


def test_status_cli_and_redeploy_keeps_replicas(ray_head, repo):
    path, registry = repo
    before = {e["replica"]: e["load"]["pid"] for e in endpoints()}
    report = Deployer(registry, path, PoolOptions(replicas=2, **FAST)).sync()
    assert report["kept"] == [POOL] and not report["started"]
    time.sleep(1.5)  # a restarted replica would have left the directory by now
    assert {e["replica"]: e["load"]["pid"] for e in endpoints()} == before
    out = subprocess.run([sys.executable, "-m", "inferline", "ray", "status", "--address", ray_head.address],
                         capture_output=True, text=True, timeout=60)
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    assert POOL in out.stdout and app_name("digits-logreg", 1) in out.stdout
    for replica in before:
        assert replica in out.stdout


def test_killed_replica_is_replaced(ray_head):
    listed = endpoints()
    assert len(listed) == 2
    victim = listed[0]
    t0 = time.monotonic()
    os.kill(victim["load"]["pid"], signal.SIGKILL)

    def replaced():
        now = endpoints()
        ids = {e["replica"] for e in now}
        return len(now) == 2 and victim["replica"] not in ids and all(e["age_s"] < 1.5 for e in now)

    wait_until(replaced, 60, "a replacement replica")
    took = time.monotonic() - t0
    print(f"\nreplica {victim['replica']} (pid {victim['load']['pid']}) SIGKILLed: replaced in {took:.1f} s")
    assert took < 30
    wait_until(lambda: process_exited(victim["load"]["child_pid"]), 10, "its inferline serve to die with it")


def test_autoscaling_follows_real_load(ray_head, repo, pixels):
    path, registry = repo
    opts = PoolOptions(min_replicas=1, max_replicas=3, target_inflight=0.3, upscale_delay_s=1.0,
                       downscale_delay_s=3.0, metrics_interval_s=0.5, look_back_s=2.0, **FAST)
    assert Deployer(registry, path, opts).sync()["started"] == [POOL]  # new options: new replicas
    wait_until(lambda: len(endpoints()) == 1, 60, "the autoscaled pool at 1 replica")
    trace, stop = [], threading.Event()
    t0 = time.monotonic()

    def record():
        while not stop.is_set():
            listed = endpoints()
            trace.append((round(time.monotonic() - t0, 1), len(listed),
                          round(sum(e["load"].get("inflight", 0.0) for e in listed), 2)))
            time.sleep(0.5)

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    load_stop = threading.Event()
    outcomes = []
    gateway = ServerProcess(path, "--ray", ray_head.address, "--inference-log", "off")  # reads the directory

    def caller(pause_s: float = 0.0):  # through the gateway, as clients would: it follows the replicas
        client = tc.InferenceServerClient(f"127.0.0.1:{gateway.grpc}")
        inp = tc.InferInput("pixels", [1, 64], "FP32")
        inp.set_data_from_numpy(pixels)
        while not load_stop.is_set():
            try:
                client.infer("digits-logreg", [inp], client_timeout=10)
                outcomes.append(None)
                time.sleep(pause_s)
            except Exception as exc:  # counted: the assertion below names them
                outcomes.append(exc)
                time.sleep(0.05)
        client.close()

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(16)]
    try:
        for c in callers:
            c.start()
        wait_until(lambda: max(n for _, n, _ in trace[-1:] or [(0, 0, 0)]) >= 2, 60, "a scale-up under load")
        peak_at = time.monotonic()
        time.sleep(3)
        load_stop.set()
        for c in callers:
            c.join(timeout=30)
        # then a trickle, 20 calls a second, while the pool shrinks: the replicas leaving must not fail it
        load_stop.clear()
        trickle = threading.Thread(target=caller, args=(0.05,), daemon=True)
        trickle.start()
        wait_until(lambda: trace and trace[-1][1] == 1 and len(endpoints()) == 1, 60, "the scale-down to 1")
        time.sleep(2)  # the last replica to go drains meanwhile
    finally:
        load_stop.set()
        for c in callers + [locals().get("trickle")]:
            if c is not None and c.ident is not None:
                c.join(timeout=30)
        gateway.stop()
    stop.set()
    recorder.join()
    failed = [o for o in outcomes if o is not None]
    print(f"\nautoscaling trace (s since load start, replicas listed, sum of inflight): {trace}")
    print(f"scale-up seen at {peak_at - t0:.1f} s; {len(outcomes)} calls through the gateway, {len(failed)} failed")
    counts = [n for _, n, _ in trace]
    assert 1 <= min(counts) and max(counts) <= 3 and max(counts) >= 2
    assert failed == [], [f"{type(e).__name__}: {e}" for e in failed[:3]]  # the status and message


def test_unwanted_pool_removed_only_after_grace(ray_head, repo):
    path, registry = repo
    push(registry, demo_package_path("digits-mlp"), live=False)
    registry.set_state("digits-mlp", 1, "canary")
    opts = PoolOptions(min_replicas=1, max_replicas=3, target_inflight=0.3, upscale_delay_s=1.0,
                       downscale_delay_s=3.0, metrics_interval_s=0.5, look_back_s=2.0, **FAST)
    deployer = Deployer(registry, path, opts, grace_s=4.0)
    report = deployer.sync()
    assert report["started"] == ["digits-mlp:1"] and report["kept"] == [POOL]
    wait_until(lambda: endpoints("digits-mlp:1"), 60, "the digits-mlp:1 pool")
    registry.set_state("digits-mlp", 1, "retired")
    assert "digits-mlp:1" not in wanted_pools(registry)
    app = app_name("digits-mlp", 1)
    t0 = time.monotonic()
    while True:
        report = deployer.sync()
        waited = time.monotonic() - t0
        if report["removed"]:
            break
        assert app in report["draining"] and waited < 4.0 + 2.0
        status = _serve_status().applications.get(app)  # the pool itself, whatever its heartbeats do
        assert status is not None and str(getattr(status.status, "value", status.status)) != "DELETING", \
            f"the pool went after {waited:.1f} s, before the grace period: {status}"
        time.sleep(0.5)
    print(f"\n{app} removed {waited:.1f} s after it became unwanted (grace 4 s)")
    assert report["removed"] == [app] and waited >= 4.0
    wait_until(lambda: not endpoints("digits-mlp:1"), 30, "the removed pool to leave the directory")
    assert endpoints() and deployer.sync()["kept"] == [POOL]


def test_desired_replicas_arithmetic():
    assert desired_replicas(0, 4, 1, 8) == 1
    assert desired_replicas(4, 4, 1, 8) == 1
    assert desired_replicas(4.1, 4, 1, 8) == 2
    assert desired_replicas(100, 4, 1, 8) == 8
    assert desired_replicas(0, 4, 0, 8) == 0


def test_cli_deploy_twice(ray_head, repo):
    """`inferline ray deploy` starts what changed, then (run again) leaves it alone."""
    path, _ = repo
    cmd = [sys.executable, "-m", "inferline", "ray", "deploy", "--address", ray_head.address, "--repository", path,
           "--replicas", "1", "--grace", "0"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    print(first.stdout, first.stderr)
    assert first.returncode == 0, first.stderr
    assert f"started   {POOL}" in first.stdout and "connected to the Ray cluster" in first.stdout
    wait_until(lambda: len(endpoints()) == 1, 60, "the CLI-deployed pool")
    before = [e["replica"] for e in endpoints()]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"unchanged {POOL}" in second.stdout and "started" not in second.stdout
    assert [e["replica"] for e in endpoints()] == before


def test_cli_unreachable_cluster_is_one_line():
    out = subprocess.run([sys.executable, "-m", "inferline", "ray", "status", "--address", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.1:1")
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_replica_leaves_directory_before_its_child_stops(ray_head, repo):
    """The shutdown order a gateway relies on: out of the directory first, then the drain."""
    from inferline.ray.replica import Replica

    path, _ = repo
    replica = Replica("digits-logreg", 1, repository=path, drain_seconds=2.0)
    try:
        wait_until(lambda: any(e["replica"] == replica.replica_id for e in endpoints()), 10, "the heartbeat")
        replica.check_health()
        assert replica.record_autoscaling_stats()["inflight"] >= 0.0
        stopper = threading.Thread(target=replica.shutdown)
        stopper.start()
        wait_until(lambda: all(e["replica"] != replica.replica_id for e in endpoints()), 5, "the removal")
        assert replica.child.poll() is None, "the child stopped before the replica left the directory"
        stopper.join(timeout=30)
        assert replica.child.returncode == 0
    finally:
        replica.shutdown()


def test_cli_watch_follows_registry_until_interrupted(ray_head, repo):
    """--watch: reports once, then only changes; Ctrl-C ends it with 130 and no traceback."""
    path, registry = repo
    cmd = [sys.executable, "-m", "inferline", "ray", "deploy", "--address", ray_head.address, "--repository", path,
           "--replicas", "1", "--grace", "1", "--watch", "--poll-interval", "0.5"]
    proc = subprocess.Popen(child_command(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        registry.set_state("digits-mlp", 1, "canary")  # retired by the grace test: wanted again
        wait_until(lambda: endpoints("digits-mlp:1"), 60, "the watch to start digits-mlp:1")
        registry.set_state("digits-mlp", 1, "retired")
        wait_until(lambda: not endpoints("digits-mlp:1"), 60, "the watch to remove digits-mlp:1")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a watch left running would redeploy its pools under later tests
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the watch did not stop on SIGINT within 60 s: {out[-2000:]}")
    print(out)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"unchanged {POOL}" in out and "started   digits-mlp:1" in out
    assert "removed   inferline-digits-mlp-v1" in out


def test_wanted_pools_follow_states_rollouts_and_fallbacks():
    """Live, canary and shadow versions, active rollouts, and what fallback chains reach (by name:
    the live version; pinned: that version), each once; retired and staged versions otherwise not."""
    from types import SimpleNamespace as R

    def rec(name, version, state, fallback=None):
        return R(name=name, version=version, state=state, is_live=state == "live", fallback_id=fallback)

    records = [rec("a", 1, "live", "b"), rec("a", 2, "canary", "c:1"), rec("b", 3, "live"), rec("b", 2, "retired"),
               rec("c", 1, "retired", "a:2"), rec("d", 1, "staged"), rec("e", 1, "staged"), rec("f", 1, "retired")]
    registry = R(list=lambda: records, rollouts=R(list_active=lambda: [R(name="e", version=1, weight=5)],
                                                   shadows=lambda: [R(name="f", version=1)]))
    assert list(wanted_pools(registry)) == ["a:1", "a:2", "b:3", "c:1", "e:1", "f:1"]


def test_replica_that_cannot_start_says_why(ray_head, repo):
    """`inferline serve --pin` of a version the registry lacks serves nothing (and says it is ready):
    the replica checks the version itself and fails with the child's last log lines."""
    from inferline.ray.replica import Replica

    path, _ = repo
    with pytest.raises(RuntimeError, match=r"digits-logreg:9: inferline serve runs but the version is not ready "
                                           r"after 3 s \(HTTP 404.*last log lines: "):
        Replica("digits-logreg", 9, repository=path, ready_timeout_s=3)


def test_canary_replicas_change_only_the_non_live_pools():
    base = PoolOptions(replicas=2)
    fewer = PoolOptions(replicas=2, canary_replicas=1)
    assert fewer.for_pool(live=True) == base.for_pool(live=True)  # same signature: live pools kept
    assert fewer.for_pool(live=False).replicas == 1 and base.for_pool(live=False).replicas == 2
    assert fewer.for_pool(live=False).signature() != base.for_pool(live=False).signature()
    assert PoolOptions(min_replicas=2, max_replicas=4).for_pool(live=False).starting_replicas() == 2
