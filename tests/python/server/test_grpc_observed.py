"""What Python keeps of gRPC inference requests, on both gRPC frontends (the native one feeds it from
its request tap, server/native.py): the inference log's samples at each model's
``logging.sample_rate`` and the rollout recorder's per-arm counts and mirrored pairs.

One server per frontend, with the inference log on: "sampled" (every request logged), "unsampled"
(none) and "rolled" (version 1 live, 2 staged; a canary at 10% in its test; nothing sampled).
"""

import time

import numpy as np
import pyarrow.dataset as ds
import pytest

from inferline.models.service import open_registry, push
from inferline.server.settings import ServerSettings
from server_fixtures import ServerThread, grpc_starter, make_repository, steady_package, with_config

tc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_frontend):
    root = tmp_path_factory.mktemp(f"observed-{grpc_frontend}")
    repo = make_repository(root, extra=[
        with_config(steady_package(root / "s", name="sampled"), logging={"sample_rate": 1.0}),
        with_config(steady_package(root / "u", name="unsampled"), logging={"sample_rate": 0.0})])
    registry = open_registry(repo)
    try:
        push(registry, with_config(steady_package(root / "v1", name="rolled"), logging={"sample_rate": 0.0}),
             live=True)
        push(registry, with_config(steady_package(root / "v2", name="rolled", max_batch=4),
                                   logging={"sample_rate": 0.0},
                                   canary={"max_copies_per_s": 0}),  # every canary answer mirrored
             live=False)
    finally:
        registry.close()
    settings = ServerSettings(host="127.0.0.1", grpc_port=0, inference_log=str(root / "logs"),
                              inference_log_flush_s=3600.0, hardware_log_interval_s=0.0)
    with ServerThread(repo, [grpc_starter(grpc_frontend)], settings, inference_log=True) as srv:
        srv.logs = root / "logs"
        srv.client = tc.InferenceServerClient(f"127.0.0.1:{srv.ports[0]}")
        yield srv
        srv.client.close()


def infer(srv, model: str, x: np.ndarray, **kw):
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return srv.client.infer(model, [inp], **kw)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def logged(srv) -> list:
    srv.dataplane.inference_log.flush()
    path = srv.logs / "inference"
    if not path.exists():
        return []
    return ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pylist()


def test_each_models_sample_rate_decides_what_the_log_keeps(server):
    rng = np.random.default_rng(5)
    xs = rng.random((6, 4), dtype=np.float32)
    for i, x in enumerate(xs):
        infer(server, "sampled", x[None], request_id=f"s-{i}")
        infer(server, "unsampled", x[None], request_id=f"u-{i}")
    ilog = server.dataplane.inference_log
    wait_until(lambda: ilog.stats()["buffered"] + ilog.stats()["records_written"] >= 6)
    time.sleep(0.2)  # anything more (a wrong share) would arrive by now
    rows = [r for r in logged(server) if r["kind"] == "sample"]
    assert sorted(r["request_id"] for r in rows) == [f"s-{i}" for i in range(6)]
    for r in rows:
        i = int(r["request_id"].split("-")[1])
        assert (r["model"], r["version"], r["answered_by"], r["arm"]) == ("sampled", 1, "sampled:1", "")
        assert np.array_equal(np.float32(r["inputs"]), xs[i]) and r["input_shape"] == [1, 4]
        assert np.allclose(np.float32(r["outputs"]), xs[i] + 1000) and r["fallback_reason"] is None
        assert 0 < r["latency_ms"] < 10_000


def test_a_canary_counts_each_request_on_its_arm_and_compares_mirrored_pairs(server):
    out = server.call(server.dataplane.canary_start("rolled", 2, steps="10", interval=3600, hold=True,
                                                    skip_gate=True))
    assert out["weight"] == 10.0
    watch = server.manager.recorder.watch("rolled")
    assert watch is not None and watch.watch.canary == 2
    versions = [infer(server, "rolled", np.ones((1, 4), np.float32), parameters={"routing_key": f"user-{i}"},
                      request_id=f"r-{i}").get_response().model_version for i in range(60)]
    assert {"1", "2"} == set(versions)
    for i in range(5):  # a request naming its version is on no arm (as on the Python path)
        infer(server, "rolled", np.ones((1, 4), np.float32), model_version="2", request_id=f"named-{i}")

    def counts():
        server.manager.recorder.collect()  # the native frontend counts in C++: collected at each flush
        return {v: (c.requests, c.errors, c.pairs) for v, c in watch.arms.items()}

    canary = versions.count("2")
    wait_until(lambda: counts() == {1: (60 - canary, 0, 0), 2: (canary, 0, canary)})  # every canary answer mirrored
    wait_until(lambda: len([r for r in logged(server) if r["kind"] == "canary_pair"]) == 2 * canary)
    pairs = [r for r in logged(server) if r["kind"] == "canary_pair"]
    assert {r["request_id"] for r in pairs} == {f"r-{i}" for i, v in enumerate(versions) if v == "2"}
    assert all(r["agree"] for r in pairs)


def test_a_served_process_logs_its_grpc_requests_and_says_what_its_tap_dropped(tmp_path, grpc_frontend):
    """`inferline serve`: every gRPC request of a model sampled at 1 is in the log once the server has
    stopped (the tap is drained before the log's last write); the native frontend's tap counter is
    in /metrics (0 here), and absent with the Python frontend."""
    import urllib.request

    from server_fixtures import ServerProcess

    repo = make_repository(tmp_path, extra=[with_config(steady_package(tmp_path / "s", name="sampled"),
                                                        logging={"sample_rate": 1.0})])
    logs = tmp_path / "logs"
    srv = ServerProcess(repo, "--inference-log", str(logs), "--hardware-log-interval", "0", frontend=grpc_frontend)
    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{srv.grpc}")
        for i in range(50):
            inp = tc.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(np.full((1, 4), i, np.float32))
            client.infer("sampled", [inp], request_id=f"g{i}")
        client.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.control}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        assert srv.stop() == 0
    rows = ds.dataset(str(logs / "inference"), format="parquet", partitioning="hive").to_table().to_pylist()
    assert sorted(r["request_id"] for r in rows) == sorted(f"g{i}" for i in range(50))
    assert all(r["kind"] == "sample" and r["answered_by"] == "sampled:1" for r in rows)
    if grpc_frontend == "native":
        assert "\ninferline_native_tap_dropped_total 0.0\n" in metrics
    else:
        assert "inferline_native_tap_dropped" not in metrics
