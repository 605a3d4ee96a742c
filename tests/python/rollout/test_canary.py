"""Canary rollouts end to end, in-process: the sticky split, automatic rollback (errors, prediction
disagreement, a version that fails to load), automatic promotion and instant rollback, a controller
that dies mid-step, label feedback, and a shadow far slower than stable."""

import asyncio
import json
import os
import threading
import time

import numpy as np
import pytest

from inferline.errors import FailedPrecondition, InvalidArgument
from inferline.models.service import open_registry, push
from inferline.rollout import lifecycle
from inferline.rollout.arms import canary_buckets
from inferline.rollout.controller import Controller
from inferline.service import Service
from server_fixtures import FLAG, flaky_package, slow_model_package, steady_package, with_config


@pytest.fixture
def repo(tmp_path):
    """A repository whose model "m" has a live version 1 (steady: y = x + 1000)."""
    root = str(tmp_path / "repo")
    registry = open_registry(root)
    push(registry, steady_package(tmp_path / "v1", name="m"), live=True)
    registry.close()
    return root


def add_version(repo, pkg, name="m") -> int:
    registry = open_registry(repo)
    try:
        return push(registry, pkg, name=name, live=False).version
    finally:
        registry.close()


def inputs(rng, n=1, flag_share=0.0):
    x = rng.integers(0, 10, size=(n, 4)).astype(np.float32)
    if flag_share:
        x[rng.random(n) < flag_share, 0] = FLAG
    return {"x": x}


class Traffic:
    """Concurrent requests with random routing keys from a background thread until stopped."""

    def __init__(self, svc, model="m", concurrency=8, flag_share=0.0, ids=False):
        self.svc, self.model, self.concurrency, self.flag_share, self.ids = svc, model, concurrency, flag_share, ids
        self.answers, self.errors = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self):
        rng = np.random.default_rng(7)
        n = 0

        async def one(i):
            try:
                a = await self.svc.infer_async(self.model, inputs(rng, 1, self.flag_share), routing_key=f"key-{i}",
                                               request_id=f"req-{i}" if self.ids else None)
                self.answers.append((i, a))
            except Exception as e:  # counted: a test asserts on them
                self.errors.append(e)

        while not self._stop.is_set():
            await asyncio.gather(*(one(n + k) for k in range(self.concurrency)))
            n += self.concurrency

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def wait_for(cond, timeout=30.0, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def rollout_of(repo, name="m"):
    registry = open_registry(repo)
    try:
        return registry.rollouts.latest(name), registry.rollouts.history(name), registry.get(name).version
    finally:
        registry.close()


def _arms_by_key(svc, keys, rng):
    async def all_keys():  # in chunks that fit the model's queue
        out = []
        for i in range(0, len(keys), 2000):
            out += await asyncio.gather(*(svc.infer_async("m", inputs(rng), routing_key=k) for k in keys[i:i + 2000]))
        return out
    return {k: a.version for k, a in zip(keys, asyncio.run(all_keys()))}


def test_split_over_10000_keys_is_within_1_5_points_and_sticky(repo, tmp_path, rng):
    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    rollout = lifecycle.start_canary(registry, "m", v2, steps="5,10", interval_s=3600, skip_gate=True)
    keys = [f"user-{i}" for i in range(10_000)]
    with Service(repo, poll_interval_s=0) as svc:
        at5 = _arms_by_key(svc, keys, rng)
        registry.rollouts.advance(rollout.id, expected_step=0, evidence={}, reason="test: next step")
        svc.models.sync_blocking()
        at10 = _arms_by_key(svc, keys, rng)
    registry.close()
    on5 = {k for k, v in at5.items() if v == v2}
    on10 = {k for k, v in at10.items() if v == v2}
    assert abs(100.0 * len(on5) / len(keys) - 5.0) <= 1.5, len(on5)
    assert abs(100.0 * len(on10) / len(keys) - 10.0) <= 1.5, len(on10)
    assert on5 <= on10  # sticky: every key on the canary at 5% is still there at 10%
    assert set(at5.values()) == {1, v2}


def test_canary_buckets_grow_from_the_top():
    assert canary_buckets(5) == 500 and canary_buckets(10) == 1000 and canary_buckets(100) == 10_000
    assert canary_buckets(0.01) == 1


def test_start_refusals(repo, tmp_path):
    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    try:
        with pytest.raises(InvalidArgument, match="outside 0-100"):
            lifecycle.start_canary(registry, "m", v2, steps="5,150", skip_gate=True)
        with pytest.raises(InvalidArgument, match="increase"):
            lifecycle.start_canary(registry, "m", v2, steps="10,5", skip_gate=True)
        with pytest.raises(FailedPrecondition, match="already live"):
            lifecycle.start_canary(registry, "m", 1, skip_gate=True)
        lifecycle.start_canary(registry, "m", v2, skip_gate=True)
        with pytest.raises(FailedPrecondition, match="already has a canary"):
            lifecycle.start_canary(registry, "m", v2, skip_gate=True)
        push(registry, steady_package(tmp_path / "lonely", name="lonely"), live=False)
        registry.set_state("lonely", 1, "staged")
        v_other = push(registry, steady_package(tmp_path / "lonely2", name="lonely", max_batch=2), live=False).version
        with pytest.raises(FailedPrecondition, match="no live version"):
            lifecycle.start_canary(registry, "lonely", v_other, skip_gate=True)
    finally:
        registry.close()


def test_error_breach_rolls_back_within_one_interval_with_evidence(repo, tmp_path):
    """The canary fails rows flagged 99 (stable answers them as its fallback): its error rate is
    ~30% against stable's 0%, so the controller rolls back before the step's interval ends."""
    v2 = add_version(repo, flaky_package(tmp_path / "v2", name="m"))
    registry = open_registry(repo)
    lifecycle.start_canary(registry, "m", v2, steps="50", interval_s=5, skip_gate=True)
    registry.close()
    with Service(repo, poll_interval_s=0.1) as svc, Traffic(svc, flag_share=0.3) as traffic:
        rollout = wait_for(lambda: (r := rollout_of(repo)[0]) and not r.active and r, 20)
    assert not traffic.errors  # every caller got an answer: the canary's failures fell back to stable
    assert rollout.status == "rolled_back" and rollout.reason.startswith("error rate"), rollout.reason
    assert rollout.ended_at - rollout.started_at < rollout.interval_s + 1.0  # within one interval (+ a poll)
    _, history, live = rollout_of(repo)
    assert live == 1
    event = [e for e in history if e.action == "rolled_back"][-1]
    canary = event.evidence["canary"]
    assert canary["requests"] >= 30 and canary["errors"] > 0 and canary["error_rate"] > 0.1
    assert event.evidence["stable"]["error_rate"] in (0.0, None)
    assert any(a.fallback_reason == "error" and a.version == 1 for _, a in traffic.answers)


def test_disagreeing_predictions_roll_back_though_errors_and_latency_match(repo, tmp_path):
    """Same signature, no errors, similar speed, but the canary's argmax differs from stable's on
    most rows: only the comparison of mirrored pairs catches it."""
    v2 = add_version(repo, flaky_package(tmp_path / "v2", name="m"))
    registry = open_registry(repo)
    lifecycle.start_canary(registry, "m", v2, steps="50", interval_s=30, skip_gate=True)
    registry.close()
    with Service(repo, poll_interval_s=0.1) as svc, Traffic(svc) as traffic:
        rollout = wait_for(lambda: (r := rollout_of(repo)[0]) and not r.active and r, 25)
    assert not traffic.errors
    assert rollout.status == "rolled_back" and rollout.reason.startswith("prediction agreement"), rollout.reason
    event = [e for e in rollout_of(repo)[1] if e.action == "rolled_back"][-1]
    assert event.evidence["canary"]["errors"] == 0
    assert event.evidence["canary"]["pairs"] >= 20 and event.evidence["canary"]["agreement"] < 0.95


def test_clean_steps_promote_then_rollback_is_instant(repo, tmp_path):
    v2 = add_version(repo, with_config(steady_package(tmp_path / "v2", name="m", max_batch=4),
                                        canary={"min_requests": 20}))
    registry = open_registry(repo)
    lifecycle.start_canary(registry, "m", v2, steps="20,100", interval_s=0.6, skip_gate=True)
    registry.close()
    with Service(repo, poll_interval_s=0.1) as svc, Traffic(svc) as traffic:
        rollout = wait_for(lambda: (r := rollout_of(repo)[0]) and not r.active and r, 30)
        assert rollout.status == "promoted", rollout.reason
        registry = open_registry(repo)
        assert registry.get("m").version == v2
        assert registry.rollback("m").version == 1  # `inferline models rollback m`
        registry.close()
        svc.models.sync_blocking()
        n = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) > n + 50)
        assert all(a.version == 1 for _, a in traffic.answers[n + 20:])
    assert not traffic.errors
    actions = [e.action for e in rollout_of(repo)[1]]
    assert actions[:3] == ["start", "advance", "promoted"]


def test_a_version_that_fails_to_load_is_refused_by_the_gate(repo, tmp_path):
    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    try:
        root = registry.fetch(registry.get("m", v2))
        with open(os.path.join(root, "model.onnx"), "ab") as f:
            f.write(b"tampered")
        with pytest.raises(FailedPrecondition, match="failed to load for the load-test gate"):
            lifecycle.start_canary(registry, "m", v2, gate_seconds=0.5)
        assert registry.get("m", v2).state == "failed"
        assert registry.rollouts.latest("m").status == "gate_failed" and registry.rollouts.active("m") is None
        with pytest.raises(FailedPrecondition, match="failed to load"):  # and a later start is refused at once
            lifecycle.start_canary(registry, "m", v2, skip_gate=True)
    finally:
        registry.close()


def test_a_version_that_fails_to_load_mid_rollout_is_rolled_back(repo, tmp_path):
    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    root = registry.fetch(registry.get("m", v2))
    with open(os.path.join(root, "model.onnx"), "ab") as f:
        f.write(b"tampered")  # the stored package no longer matches its sha256
    lifecycle.start_canary(registry, "m", v2, steps="10,50", interval_s=30, skip_gate=True)
    registry.close()
    with Service(repo, poll_interval_s=0.1) as svc:
        rollout = wait_for(lambda: (r := rollout_of(repo)[0]) and not r.active and r, 20)
        assert svc.infer("m", {"x": np.zeros((1, 4), np.float32)}).version == 1
    assert rollout.status == "rolled_back" and "failed to load" in rollout.reason


def test_a_dead_controllers_lease_expires_and_another_takes_over(repo, tmp_path):
    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    rollout = lifecycle.start_canary(registry, "m", v2, steps="10,50", interval_s=0.2, skip_gate=True)
    first, second = Controller("first", lease_ttl_s=0.5), Controller("second", lease_ttl_s=0.5)
    first.tick(registry)
    assert registry.rollouts.lease("rollout:m")[0] == "first"
    time.sleep(0.25)
    second.tick(registry)  # the first still holds the lease: the second does nothing
    assert registry.rollouts.active("m").step == 0
    time.sleep(0.4)  # "first" died without releasing; its lease expires
    counts = {"canary": {"version": v2, "requests": 100}, "stable": {"version": 1, "requests": 900}}
    registry.rollouts.put_counts(rollout.window, "worker-a", counts)
    second.tick(registry)
    assert registry.rollouts.lease("rollout:m")[0] == "second"
    assert registry.rollouts.active("m").step == 1  # the rollout continued from its stored step
    actions = [e.action for e in registry.rollouts.history("m")]
    assert "takeover" in actions and actions[-1] == "advance"
    registry.close()


def test_counts_from_two_workers_add_up_in_the_decision(repo, tmp_path):
    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    rollout = lifecycle.start_canary(registry, "m", v2, steps="10,50", interval_s=0.1, skip_gate=True)
    one = {"canary": {"version": v2, "requests": 20, "errors": 0}, "stable": {"version": 1, "requests": 200}}
    registry.rollouts.put_counts(rollout.window, "worker-a", one)
    time.sleep(0.15)
    assert Controller("c").tick(registry) == []  # 20 canary requests: below min_requests (30), it waits
    registry.rollouts.put_counts(rollout.window, "worker-b", one)
    (name, decision), = Controller("c").tick(registry)
    assert decision.action == "advance" and decision.evidence["canary"]["requests"] == 40
    registry.close()


def test_label_feedback_gives_each_arm_its_accuracy(repo, tmp_path):
    v2 = add_version(repo, flaky_package(tmp_path / "v2", name="m"))
    registry = open_registry(repo)
    lifecycle.start_canary(registry, "m", v2, steps="50", interval_s=3600, hold=True, skip_gate=True)
    registry.close()
    rng = np.random.default_rng(3)
    with Service(repo, poll_interval_s=0) as svc:
        svc.models.sync_blocking()
        answers = {}
        for i in range(200):
            x = inputs(rng)
            answers[f"r{i}"] = svc.infer("m", x, routing_key=f"k{i}", request_id=f"r{i}")
        # the truth: always class 3 (what the canary's table predicts); stable is right ~1/4 of the time
        labels = [{"id": rid, "label": 3} for rid in answers] + [{"id": "never-seen", "label": 1}]
        result = svc.feedback("m", labels)
        assert result == {"accepted": 201, "unknown": 1, "unknown_ids": ["never-seen"]}
        registry = open_registry(repo)
        status = lifecycle.canary_status(registry, "m")
        registry.close()
    window = status["window"]
    assert window["canary"]["labelled"] + window["stable"]["labelled"] == 200
    assert window["canary"]["accuracy"] == 1.0
    assert window["canary_accuracy_delta"] > 0.5
    with pytest.raises(InvalidArgument, match=r"labels\[0\].id"):
        Service.feedback(svc, "m", [{"id": "", "label": 1}])


def test_a_far_slower_shadow_never_delays_or_fails_real_answers(tmp_path):
    root = str(tmp_path / "repo")
    registry = open_registry(root)
    push(registry, steady_package(tmp_path / "v1", name="s", features=1), live=True)
    slow = push(registry, slow_model_package(tmp_path, iterations=200_000, queue_capacity=1), name="s",
                live=False).version
    lifecycle.start_shadow(registry, "s", slow, share=100)
    registry.close()
    with Service(root, poll_interval_s=0) as svc:
        svc.models.sync_blocking()
        assert svc.models.recorder.watch("s").watch.shadow == slow
        xs = np.arange(300, dtype=np.float32).reshape(-1, 1, 1)
        answers = [svc.infer("s", {"x": x}, routing_key=str(i)) for i, x in enumerate(xs)]
        wait_for(lambda: svc.models.recorder.in_flight() == 0, 30)
        svc.models.run_on_registry(lambda reg: svc.models.recorder.flush(reg, svc.models.worker_id))
        registry = open_registry(root)
        status = lifecycle.canary_status(registry, "s")
        registry.close()
    assert all(a.version == 1 and a.fallback_reason is None for a in answers)
    assert [float(a["y"][0, 0]) for a in answers] == [float(x[0, 0]) + 1000.0 for x in xs]
    shadow = status["shadow"]["window"]
    assert shadow["dropped"] > 0  # copies beyond what the slow version could take were dropped, counted
    assert shadow["pairs"] >= 1 and shadow["agreement"] == 0.0  # y = x vs y = x + 1000


def test_two_server_processes_route_every_key_alike(repo, tmp_path):
    """Two `inferline serve` processes on one registry, a 5% canary: each key gets the same version
    from both (the split is the core's pinned hash, not per-process state)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from server_fixtures import ServerProcess

    v2 = add_version(repo, steady_package(tmp_path / "v2", name="m", max_batch=4))
    registry = open_registry(repo)
    lifecycle.start_canary(registry, "m", v2, steps="5", interval_s=3600, hold=True, skip_gate=True)
    registry.close()
    keys = [f"user-{i}" for i in range(1000)]
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

    def version_for(port, key):
        doc = dict(body, parameters={"routing_key": key})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/m/infer", json.dumps(doc).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(json.load(r)["model_version"])

    servers = [ServerProcess(repo), ServerProcess(repo)]
    try:
        with ThreadPoolExecutor(8) as pool:
            seen = [list(pool.map(lambda k, p=s.http: version_for(p, k), keys)) for s in servers]
    finally:
        for s in servers:
            s.stop()
    assert seen[0] == seen[1]
    share = seen[0].count(v2) / len(keys)
    assert 0.02 <= share <= 0.08 and set(seen[0]) == {1, v2}


def test_mirroring_stays_within_its_budget_of_traffic():
    from inferline.rollout.arms import MIRROR_BUDGET, mirror_share

    assert mirror_share(100.0, 5) == 100.0 and mirror_share(100.0, 10) == 100.0  # small weights: every request
    assert mirror_share(100.0, 50) == 20.0 and mirror_share(100.0, 100) == 10.0
    assert mirror_share(30.0, 5) == 30.0  # a configured share below the cap stays
    for weight in (1, 5, 10, 25, 50, 100):
        assert mirror_share(100.0, weight) * weight / 100.0 <= MIRROR_BUDGET


def test_routed_traffic_is_recorded_per_minute_for_the_gates_observed_peak(repo):
    with Service(repo, poll_interval_s=0) as svc:
        svc.models.sync_blocking()  # the first flush only takes the starting count
        for i in range(30):
            svc.infer("m", {"x": np.full((1, 4), i, np.float32)})
        svc.models.sync_blocking()
    registry = open_registry(repo)
    try:
        peak = registry.rollouts.peak_rate("m", int(time.time() // 60) - 60)
    finally:
        registry.close()
    assert peak is not None and peak >= 15 / 60.0  # 30 requests in one minute, or split over two
