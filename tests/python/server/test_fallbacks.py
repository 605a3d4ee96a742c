"""Fallback chains end to end: a real server over a registry (each gRPC frontend), NVIDIA's gRPC client,
answers that say who produced them and why (`model_version`, `routed_to`, `fallback_reason`).

Models (server_fixtures): `flaky` fails exactly the rows whose x[0] is FLAG (ONNX Runtime refuses
an out-of-range Gather; the core isolates those rows); `steady` answers y = x + 1000; `slow`
takes ~80 ms a row with a queue of one; `steady1` is `steady` with slow's signature.
"""

import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from inferline.models.service import open_registry
from inferline.server.settings import ServerSettings
from server_fixtures import (FLAG, ServerThread, flaky_package, grpc_starter, make_repository, slow_model_package,
                             steady_package)

grpcclient = pytest.importorskip("tritonclient.grpc")
aioclient = pytest.importorskip("tritonclient.grpc.aio")


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_frontend):
    root = tmp_path_factory.mktemp(f"fallbacks-{grpc_frontend}")
    extra = [steady_package(root), steady_package(root, name="steady1", features=1),
             # breaker off: this model's failures are per input, not a broken version
             flaky_package(root, fallback="steady", breaker={"consecutive_failures": 0, "error_rate": 0}),
             flaky_package(root, name="brittle", fallback="steady",
                           breaker={"consecutive_failures": 3, "error_rate": 0, "open_us": 300_000}),
             slow_model_package(root, iterations=80_000, queue_capacity=1, fallback="steady1")]
    cached = steady_package(root, name="cached")
    with open(os.path.join(cached, "model.json")) as f:
        config = json.load(f)
    config["cache"] = {"max_bytes": 1 << 20}
    with open(os.path.join(cached, "model.json"), "w") as f:
        json.dump(config, f)
    repo = make_repository(root, extra=extra + [flaky_package(root, name="lost", fallback="steady"), cached])
    registry = open_registry(repo)  # `lost` is tampered with in the store: it fails to load at serve time
    path = os.path.join(registry.fetch(registry.get("lost")), "model.onnx")
    registry.close()
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"garbage")
    settings = ServerSettings(host="127.0.0.1", grpc_port=0)
    with ServerThread(repo, [grpc_starter(grpc_frontend)], settings) as srv:
        srv.url = f"127.0.0.1:{srv.ports[0]}"
        yield srv


def x_input(rows, name="x"):
    inp = grpcclient.InferInput(name, list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return inp


def who(result):
    r = result.get_response()
    reason = r.parameters["fallback_reason"].string_param if "fallback_reason" in r.parameters else None
    return r.model_name, r.model_version, r.parameters["routed_to"].string_param, reason


def test_failing_rows_alone_go_to_the_fallback_under_load(server):
    rng = np.random.default_rng(5)
    n = 300
    flagged = rng.random(n) < 0.2
    rows = np.zeros((n, 4), np.float32)
    rows[:, 0] = np.where(flagged, FLAG, rng.integers(0, 10, n))

    async def run():  # 32 in flight at once: within the server's 64 calls per connection
        client = aioclient.InferenceServerClient(server.url)
        slots = asyncio.Semaphore(32)

        async def one(i):
            async with slots:
                return await client.infer("flaky", [x_input(rows[i:i + 1])])
        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await client.close()

    results = asyncio.run(run())  # all answered: gather raises on any error
    for i, result in enumerate(results):
        y = result.as_numpy("y")[0]
        if flagged[i]:
            assert who(result) == ("steady", "1", "steady:1", "error")
            np.testing.assert_array_equal(y, rows[i] + 1000)
        else:
            assert who(result) == ("flaky", "1", "flaky:1", None)
            np.testing.assert_array_equal(y, np.arange(40, dtype=np.float32).reshape(10, 4)[int(rows[i, 0])])
    assert 30 < flagged.sum() < 90


def test_deadline_out_of_reach_goes_to_the_fallback_in_time(server):
    client = grpcclient.InferenceServerClient(server.url)
    x = np.ones((1, 1), np.float32)
    client.infer("slow", [x_input(x)])  # the slow model has run: its compute estimate is ~80 ms
    t0 = time.perf_counter()
    # 25 ms: far below the primary's ~80 ms, and room enough for the fallback's sub-millisecond
    # answer even when a loaded 2-core machine delays the request on its way to the router.
    result = client.infer("slow", [x_input(x)], timeout=25_000)  # µs
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    assert who(result) == ("steady1", "1", "steady1:1", "deadline")
    assert result.as_numpy("y")[0, 0] == 1001.0
    assert elapsed_ms < 25 + 50  # the deadline, plus a generous allowance for a loaded 2-core machine
    relaxed = client.infer("slow", [x_input(x)], timeout=2_000_000)
    assert who(relaxed)[0] == "slow"


def test_burst_past_capacity_gets_fallback_answers_not_errors(server):
    async def run():
        client = aioclient.InferenceServerClient(server.url)
        try:
            x = np.ones((1, 1), np.float32)
            return await asyncio.gather(*(client.infer("slow", [x_input(x)]) for _ in range(40)))
        finally:
            await client.close()

    results = asyncio.run(run())  # no UNAVAILABLE: gather would raise
    reasons = [who(r)[3] for r in results]
    assert reasons.count("overload") >= 20  # a queue of one at ~80 ms a row cannot hold a burst of 40
    assert {who(r)[0] for r in results if who(r)[3] == "overload"} == {"steady1"}
    assert any(reason is None for reason in reasons)  # the primary still answered what it could
    assert grpcclient.InferenceServerClient(server.url).is_server_ready()


def test_breaker_opens_routes_to_the_fallback_and_closes_after_recovery(server):
    client = grpcclient.InferenceServerClient(server.url)
    good = np.array([[1, 0, 0, 0]], np.float32)
    bad = np.array([[FLAG, 0, 0, 0]], np.float32)
    assert who(client.infer("brittle", [x_input(good)]))[3] is None
    for _ in range(3):  # three failures in a row open the breaker
        assert who(client.infer("brittle", [x_input(bad)]))[3] == "error"
    assert who(client.infer("brittle", [x_input(good)])) == ("steady", "1", "steady:1", "breaker_open")
    stats = server.engine.routing_stats("brittle")
    assert stats["fallbacks"]["breaker_open"] >= 1
    time.sleep(0.4)  # open_us = 300 ms: the next request is a half-open probe, which succeeds
    assert who(client.infer("brittle", [x_input(good)])) == ("brittle", "1", "brittle:1", None)
    assert who(client.infer("brittle", [x_input(good)]))[3] is None  # closed again


def test_a_model_that_failed_to_load_is_answered_by_its_fallback(server):
    client = grpcclient.InferenceServerClient(server.url)
    x = np.array([[2, 0, 0, 0]], np.float32)
    result = client.infer("lost", [x_input(x)])
    assert who(result) == ("steady", "1", "steady:1", "unavailable")
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1000)
    assert not client.is_model_ready("lost")  # it does not serve; its fallback answers for it
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["lost"].reason.startswith("failed to load")


def test_bad_input_is_the_callers_fault_never_a_fallback(server):
    client = grpcclient.InferenceServerClient(server.url)
    before = server.engine.routing_stats("flaky")["answered_by_fallback"]
    with pytest.raises(Exception) as e:
        client.infer("flaky", [x_input(np.ones((1, 3), np.float32))])  # wrong shape
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "'x'" in e.value.message()
    assert server.engine.routing_stats("flaky")["answered_by_fallback"] == before


def test_explicit_version_and_odd_routing_keys(server):
    client = grpcclient.InferenceServerClient(server.url)
    x = np.array([[2, 0, 0, 0]], np.float32)
    assert who(client.infer("flaky", [x_input(x)], model_version="1"))[0] == "flaky"
    for key in ("", "k" * 10_000, "ключ-🔑", "0"):
        assert who(client.infer("flaky", [x_input(x)], parameters={"routing_key": key}))[0] == "flaky"
    for key in (42, True):  # a routing key is a string: anything else is the caller's mistake
        with pytest.raises(Exception) as e:
            client.infer("flaky", [x_input(x)], parameters={"routing_key": key})
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "routing_key" in e.value.message()


def test_prediction_cache_answers_a_repeated_input(server):
    client = grpcclient.InferenceServerClient(server.url)
    x = np.array([[5, 6, 7, 8]], np.float32)
    first = client.infer("cached", [x_input(x)]).as_numpy("y")
    before = server.engine.routing_stats("cached")
    again = client.infer("cached", [x_input(x)]).as_numpy("y")
    other = client.infer("cached", [x_input(x + 1)]).as_numpy("y")
    after = server.engine.routing_stats("cached")
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(other, x + 1 + 1000)  # another input: computed, never the cached answer
    assert after["cache_hits"] == before["cache_hits"] + 1
    assert after["cache_misses"] == before["cache_misses"] + 1
    assert after["cache_hits"] + after["cache_misses"] == after["requests"]


ROUTE_KEYS = """
import json, sys
import numpy as np
import inferline as il
from inferline.engine import Engine

config = lambda v: il.ModelConfig(name="m", version=v, inputs=[("x", "float32", (-1, 1))],
                                  outputs=[("y", "float32", (-1, 1))])
with Engine() as e:
    for v in (1, 2):
        e.load(config(v), lambda b: {"y": b["x"]})
    e.publish_policy("m", {"live": 1, "served": [1, 2], "arms": [{"version": 1, "lo": 0, "hi": 7000},
                                                                  {"version": 2, "lo": 7000, "hi": 10000}],
                           "versions": [{"version": 1, "chain": []}, {"version": 2, "chain": []}]})
    x = np.zeros((1, 1), np.float32)
    print(json.dumps([e.infer_routed("m", {"x": x}, routing_key=f"user-{i}").version for i in range(300)]))
"""


def test_every_process_routes_a_key_alike():
    """Two processes (two workers, two replicas) send each routing key to the same version."""
    runs = [subprocess.run([sys.executable, "-c", ROUTE_KEYS], capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second
    assert 0.6 < first.count(1) / len(first) < 0.8  # the 70/30 split, within sampling noise
