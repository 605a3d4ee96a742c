"""Autoscaling on the SLO: a replica whose p99 is above its version's slo.p99_ms asks for one more
replica, whatever its in-flight count (the arithmetic, then a real pool on the folder's Ray head)."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient

from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push
from inferline.ray.autoscale import above_slo
from inferline.ray.deploy import Deployer, PoolOptions
from inferline.ray.directory import directory
from inferline.ray.replica import LoadMeter, interval_p99

from server_fixtures import ServerProcess, with_config

pytestmark = pytest.mark.ray

INF = float("inf")


def test_interval_p99_reads_the_bucket_of_the_99th_percentile_between_two_readings():
    before = {0.001: 10.0, 0.01: 10.0, 0.1: 10.0, INF: 10.0}
    after = {0.001: 10.0 + 95, 0.01: 10.0 + 99, 0.1: 10.0 + 100, INF: 10.0 + 100}
    assert interval_p99(before, after, 20) == 0.01
    assert interval_p99(before, {0.001: 20.0, 0.01: 20.0, 0.1: 20.0, INF: 20.0}, 20) is None  # 10 answers: too few
    assert interval_p99({}, {0.001: 0.0, 0.01: 0.0, 0.1: 50.0, INF: 50.0}, 20) == 0.1
    meter = LoadMeter()
    meter.update({"in_flight": 0.0, "lobby": 0.0, "busy_s": 0.0, "latency_buckets": before}, 1.0)
    meter.update({"in_flight": 0.0, "lobby": 0.0, "busy_s": 0.5, "latency_buckets": after}, 2.0)
    assert meter.p99_s == 0.01 and meter.inflight == 0.5


def test_above_slo_adds_one_replica_within_the_bound():
    assert above_slo(1, [0.0, 0.2], current=2, hi=4) == 1  # all within their SLO: in-flight decides
    assert above_slo(1, [0.0, 0.8], current=2, hi=4) == 3  # one replica mostly above it: one more
    assert above_slo(4, [1.0], current=2, hi=4) == 4  # in-flight already wants more
    assert above_slo(1, [1.0], current=4, hi=4) == 4  # never past the bound


def test_a_pool_missing_its_slo_grows_though_its_inflight_is_low(ray_head, tmp_path):
    from ray import serve

    from inferline.ray.deploy import APP_PREFIX, _serve_status
    for app in _serve_status().applications:
        if app.startswith(APP_PREFIX):
            serve.delete(app)
    pkg = shutil.copytree(demo_package_path("digits-logreg"), tmp_path / "strict")
    with_config(str(pkg), slo={"p99_ms": 0.001})  # 1 µs: every request is over it
    repo = str(tmp_path / "repo")
    registry = open_registry(repo)
    push(registry, str(pkg))
    opts = PoolOptions(min_replicas=1, max_replicas=2, target_inflight=1000.0, upscale_delay_s=1.0,
                       downscale_delay_s=600.0, metrics_interval_s=0.5, look_back_s=2.0, drain_seconds=0.5,
                       health_check_period_s=1.0)
    Deployer(registry, repo, opts).sync()
    count = lambda: len(ray.get(directory().endpoints.remote()).get("digits-logreg:1", []))  # noqa: E731
    deadline = time.monotonic() + 90
    while count() < 1:
        assert time.monotonic() < deadline, "the pool did not start"
        time.sleep(0.2)
    gateway = ServerProcess(repo, "--ray", ray_head.address, "--inference-log", "off")
    stop, trace = threading.Event(), []

    def caller():  # about 100 calls a second: far below the in-flight target, always above the SLO
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gateway.grpc}")
        x = grpcclient.InferInput("pixels", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        while not stop.is_set():
            client.infer("digits-logreg", [x], client_timeout=10)
            time.sleep(0.01)
        client.close()

    t = threading.Thread(target=caller, daemon=True)
    t.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 60 and count() < 2:
            trace.append((round(time.monotonic() - t0, 1), count()))
            time.sleep(0.5)
        grown = count()
    finally:
        stop.set()
        t.join(30)
        gateway.stop()
        registry.close()
        serve.delete("inferline-digits-logreg-v1")
    print(f"\nSLO autoscaling: 2 replicas after {time.monotonic() - t0:.1f} s; trace {trace[-6:]}")
    assert grown == 2
