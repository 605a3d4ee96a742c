"""Chaos on a local Ray cluster: a gateway (`inferline serve --ray`) in front of 2 stable replicas and
1 canary replica under steady load; a stable replica's process is killed, then the canary's, then
the gateway's. Real processes throughout: Ray's head (conftest.py), Serve's replicas with their
`inferline serve --pin` children, the gateway, and tritonclient callers.

The numbers (availability, replacement times, the gateway's outage) are printed (-s shows them)."""

from __future__ import annotations

import collections
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
from inferline.ray.directory import directory
from inferline.ray.deploy import deploy

from server_fixtures import ServerProcess, with_config

pytestmark = pytest.mark.ray

ROW = np.load(os.path.join(demo_package_path("digits-mlp"), "golden.npz"))["inputs/pixels"][:1]  # 16 rows
KEYS = [f"user-{k}" for k in range(64)]
REPLACED_WITHIN_S = 30.0  # the design's number


@pytest.fixture
def canary_repo(tmp_path):
    """digits-logreg v1 live, v2 (another model's weights: its answers differ) a 50% canary, held."""
    path = str(tmp_path / "repo")
    registry = open_registry(path)
    push(registry, demo_package_path("digits-logreg"))
    mlp = shutil.copytree(demo_package_path("digits-mlp"), tmp_path / "mlp")
    # only failures may roll this canary back: on a 2-core machine running Ray, 3 replicas and 2
    # gateways, one replica's p99 can trail the others' and a latency rollback before the canary's
    # kill would leave nothing for the fallback chain to answer (it once did, in CI)
    with_config(str(mlp), name="digits-logreg", fallback=None,
                canary={"max_p99_ratio": 1000.0, "p99_slack_ms": 60_000.0, "min_agreement": 0.0},
                slo={"p99_ms": 60_000.0})
    push(registry, str(mlp), name="digits-logreg", live=False)
    registry.rollouts.begin("digits-logreg", 2, steps=[50], interval_s=3600, hold=True)
    registry.close()
    return path


class Load:
    """Callers sending one row each with a routing key, round the keys, until stopped; every answer
    is recorded as (time, key, outcome) with outcome "v1", "v2", "v1-fallback" or the error."""

    def __init__(self, target: str, answers: dict, callers: int = 3):
        self.target, self.answers = target, answers
        self.records: list = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(callers)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        # both gateways behind gRPC's own round-robin balancing, as clients of a headless service have them
        client = grpcclient.InferenceServerClient(self.target, channel_args=[("grpc.lb_policy_name", "round_robin")])
        x = grpcclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(ROW)
        n = i
        while not self._stop.is_set():
            key = KEYS[n % len(KEYS)]
            n += 3
            try:
                result = client.infer("digits-logreg", [x], parameters={"routing_key": key}, client_timeout=5)
                got = result.as_numpy("logits")
                which = next((v for v, want in self.answers.items() if np.array_equal(got, want)), "wrong")
                if "fallback_reason" in result.get_response().parameters:
                    which += "-fallback"
                self.records.append((time.monotonic(), key, which))
            except Exception as e:
                self.records.append((time.monotonic(), key, f"error: {str(e).splitlines()[0][:120]}"))
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def between(self, t0: float, t1: float) -> list:
        return [r for r in self.records if t0 <= r[0] < t1]


def listed(pool: str) -> dict:
    """{replica id: load report} of the pool's replicas in the directory now."""
    return {e["replica"]: e["load"] for e in ray.get(directory().endpoints.remote()).get(pool, [])}


def kill_one(pool: str) -> tuple:
    """SIGKILLs one replica's Ray worker process; (its replica id, the time)."""
    import os
    import signal
    replica, load = sorted(listed(pool).items())[0]
    os.kill(load["pid"], signal.SIGKILL)
    return replica, time.monotonic()


def replaced(pool: str, dead: str, count: int, since: float) -> float:
    """Seconds from `since` until the pool lists `count` replicas again, none of them `dead`."""
    deadline = since + 90
    while time.monotonic() < deadline:
        now = listed(pool)
        if len(now) >= count and dead not in now:
            return time.monotonic() - since
        time.sleep(0.2)
    raise AssertionError(f"{pool}: not replaced within 90 s: {listed(pool)}")


def test_replicas_and_the_gateway_killed_under_load(ray_head, canary_repo):
    report = deploy(canary_repo, ray_head.address, replicas=2, canary_replicas=1, wait_ready_s=120, grace_s=1)
    assert sorted(report["started"]) == ["digits-logreg:1", "digits-logreg:2"], report
    gateways = [ServerProcess(canary_repo, "--ray", ray_head.address, "--inference-log", "off") for _ in range(2)]
    direct = {}
    for pool in ("digits-logreg:1", "digits-logreg:2"):
        client = grpcclient.InferenceServerClient(ray.get(directory().endpoints.remote())[pool][0]["endpoint"])
        x = grpcclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(ROW)
        direct["v" + pool[-1]] = client.infer("digits-logreg", [x]).as_numpy("logits")
        client.close()
    load = Load("ipv4:" + ",".join(f"127.0.0.1:{g.grpc}" for g in gateways), direct)
    try:
        deadline = time.monotonic() + 30  # the gateway loads the canary's forwarder at its next poll
        while not any(r[2] == "v2" for r in load.records) and time.monotonic() < deadline:
            time.sleep(0.1)
        canary_keys = {r[1] for r in load.records if r[2] == "v2"}
        assert canary_keys, "no key reached the canary"
        start = time.monotonic()
        time.sleep(2.0)

        dead, t_stable = kill_one("digits-logreg:1")
        stable_s = replaced("digits-logreg:1", dead, 2, t_stable)
        time.sleep(1.0)

        dead, t_canary = kill_one("digits-logreg:2")
        canary_s = replaced("digits-logreg:2", dead, 1, t_canary)
        time.sleep(1.0)
        replicas_end = time.monotonic()

        gone = gateways[0]
        gone.proc.kill()  # one of the two gateways: only its calls in flight fail
        t_gateway = time.monotonic()
        gone.stop()  # reaps it
        time.sleep(2.0)
        gateways[0] = ServerProcess(canary_repo, "--ray", ray_head.address, "--inference-log", "off",
                                    ports=(gone.http, gone.grpc))  # restarted where it was
        back = time.monotonic()
        time.sleep(2.0)
    finally:
        load.stop()
        for g in gateways:
            g.stop()

    registry = open_registry(canary_repo)
    canary_state = registry.get("digits-logreg", 2).state
    history = [(round(e.at - time.time() + time.monotonic() - t_canary, 1), e.action, e.reason)
               for e in registry.rollouts.history("digits-logreg")]  # seconds after the canary's kill
    registry.close()
    during = load.between(start, replicas_end)
    failed = [r for r in during if r[2].startswith("error") or r[2] == "wrong"]
    availability = 1 - len(failed) / len(during)
    after_canary_kill = [r for r in load.between(t_canary, t_canary + canary_s) if r[1] in canary_keys]
    outage = load.between(t_gateway, back + 2.0)
    print(f"\nchaos: {len(during)} requests while replicas were killed, availability {availability:.5f} "
          f"({len(failed)} failed); stable replica replaced in {stable_s:.1f} s, canary replica in {canary_s:.1f} s; "
          f"canary keys while the canary was down: {len(after_canary_kill)}, of which answered by stable as a "
          f"fallback: {sum(r[2] == 'v1-fallback' for r in after_canary_kill)} "
          f"({dict(collections.Counter(r[2] for r in after_canary_kill))}; the canary is now {canary_state}; its rollout events, at seconds from the canary's kill: {history}); "
          f"one of 2 gateways killed: {len(outage)} requests from the kill to 2 s after its restart, "
          f"{sum(r[2].startswith('error') for r in outage)} errors")
    assert availability >= 0.999, failed[:5]
    assert stable_s < REPLACED_WITHIN_S and canary_s < REPLACED_WITHIN_S
    # the canary's chain starts with stable: its keys are answered there, marked, while it is down (and
    # unmarked once the controller has rolled the canary back for those very failures)
    assert after_canary_kill and all(r[2] in ("v1", "v1-fallback", "v2") for r in after_canary_kill)
    assert any(r[2] == "v1-fallback" for r in after_canary_kill), history
    assert sum(r[2].startswith("error") for r in outage) <= 3  # the callers' calls in flight at most
    assert len(load.between(back + 1.0, back + 2.0)) > 0
