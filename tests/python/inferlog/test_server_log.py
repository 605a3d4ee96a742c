"""The inference log on a server: the sampling rate over 10,000 requests of the data plane, records
that match what was answered, every shadow pair, and a real `inferline serve` that logs while it is
scraped, or keeps serving when its log directory cannot be written."""

import asyncio
import json
import os
import shutil
import time
import urllib.request

import numpy as np
import pyarrow.dataset as ds
import pytest

from inferline import inferlog
from inferline.demo_models import demo_package_path
from inferline.models.service import open_registry, push
from inferline.server.settings import ServerSettings
from inferline.server.types import InferInput, InferRequest
from server_fixtures import ServerProcess, ServerThread, make_repository, steady_package, with_config

N = 10_000


def _settings(root, **kw) -> ServerSettings:
    return ServerSettings(inference_log=str(root), inference_log_flush_s=3600.0, hardware_log_interval_s=0.0, **kw)


def _read(root) -> list:
    return ds.dataset(str(root / "inference"), format="parquet", partitioning="hive").to_table().to_pylist()


def _binomial_ok(count: int, n: int, p: float) -> bool:
    """Within 4.5 standard deviations (a false failure about once in 150,000 runs)."""
    return abs(count - n * p) <= 4.5 * (n * p * (1 - p)) ** 0.5


async def _infer_all(dp, model, input_name, rows, concurrency=64) -> dict:
    answers = {}

    async def one(i):
        req = InferRequest(model, id=f"{model}-{i}", inputs=[InferInput(input_name, "FP32", [1, rows.shape[1]],
                                                                        rows[i:i + 1])])
        answers[req.id] = await dp.infer(req)

    for start in range(0, len(rows), concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(start + concurrency, len(rows)))))
    return answers


def test_sampling_rate_over_10000_requests_and_records_match_answers(tmp_path, rng):
    steady = with_config(steady_package(tmp_path), logging={"sample_rate": 0.2})
    repo = make_repository(tmp_path, extra=[steady])
    logs = tmp_path / "logs"
    with ServerThread(repo, frontends=[]) as srv:
        ilog = inferlog.for_server(_settings(logs), 1, srv.manager.recorder)
        srv.dataplane.inference_log = ilog
        pixels = rng.random((N, 64), dtype=np.float32) * 16
        xs = rng.random((N, 4), dtype=np.float32)
        answers = srv.call(_infer_all(srv.dataplane, "digits-mlp", "pixels", pixels), timeout=600)
        answers.update(srv.call(_infer_all(srv.dataplane, "steady", "x", xs), timeout=600))
        ilog.close()
    stats = ilog.stats()
    assert stats["records_dropped"] == stats["records_failed"] == stats["write_failures"] == 0
    rows = _read(logs)
    mlp = [r for r in rows if r["model"] == "digits-mlp"]
    st = [r for r in rows if r["model"] == "steady"]
    assert _binomial_ok(len(mlp), N, 0.01), len(mlp)   # the default rate
    assert _binomial_ok(len(st), N, 0.2), len(st)      # the model's logging.sample_rate
    assert len({r["request_id"] for r in rows}) == len(rows) == stats["records_written"]
    for r in mlp:
        i = int(r["request_id"].rsplit("-", 1)[1])
        answer = answers[r["request_id"]]
        logits, label = (o.data for o in answer.outputs)
        assert np.array_equal(np.float32(r["inputs"]), pixels[i]) and r["input_shape"] == [1, 64]
        assert np.array_equal(np.float32(r["outputs"]), logits.reshape(-1))
        assert r["predicted"] == int(label.reshape(-1)[0]) == int(np.argmax(logits))
        assert r["confidence"] is None  # logits are not probabilities
        assert (r["version"], r["answered_by"], r["arm"], r["kind"]) == (1, "digits-mlp:1", "", "sample")
        assert r["latency_ms"] > 0 and r["fallback_reason"] is None and r["agree"] is None
    for r in st[:50]:
        i = int(r["request_id"].rsplit("-", 1)[1])
        assert np.array_equal(np.float32(r["outputs"]), xs[i] + 1000) and r["predicted"] == int(np.argmax(xs[i]))


def test_every_shadow_pair_is_logged(tmp_path, rng):
    repo = make_repository(tmp_path)
    v2 = shutil.copytree(demo_package_path("digits-mlp"), tmp_path / "mlp-v2")
    registry = open_registry(repo)
    try:
        # no copy cap: every one of the 200 requests is copied to the shadow, and every pair logged
        version = push(registry, with_config(str(v2), logging={"sample_rate": 0.0},
                                             canary={"max_copies_per_s": 0})).version
    finally:
        registry.close()
    logs = tmp_path / "logs"
    with ServerThread(repo, frontends=[]) as srv:
        srv.call(srv.dataplane.shadow_start("digits-mlp", version, 100.0))
        ilog = inferlog.for_server(_settings(logs), 1, srv.manager.recorder)
        srv.dataplane.inference_log = ilog
        pixels = rng.random((200, 64), dtype=np.float32) * 16
        answers = srv.call(_infer_all(srv.dataplane, "digits-mlp", "pixels", pixels, concurrency=8))
        deadline = time.time() + 30
        while srv.manager.recorder.in_flight() and time.time() < deadline:
            time.sleep(0.05)
        ilog.close()
    pairs = [r for r in _read(logs) if r["kind"] == "shadow_pair"]
    assert len(pairs) == 2 * len(answers)
    by_id: dict = {}
    for r in pairs:
        by_id.setdefault(r["request_id"], {})[r["arm"]] = r
    assert set(by_id) == set(answers)
    for rid, arms in by_id.items():
        stable, shadow = arms["stable"], arms["shadow"]
        assert (stable["version"], shadow["version"], shadow["answered_by"]) == (1, version, f"digits-mlp:{version}")
        assert stable["agree"] is True and shadow["agree"] is True  # the same weights
        assert stable["outputs"] == shadow["outputs"] and stable["inputs"] == shadow["inputs"]
        assert np.array_equal(np.float32(stable["outputs"]), answers[rid].outputs[0].data.reshape(-1))


def _rest_infer(port, model, rid, x) -> dict:
    body = json.dumps({"id": rid, "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                              "data": x.reshape(-1).tolist()}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def _scrape(port) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        r.read()
        return r.status


def test_a_real_server_logs_while_scraped_and_under_load(tmp_path, rng):
    steady = with_config(steady_package(tmp_path), logging={"sample_rate": 1.0})
    repo = make_repository(tmp_path, extra=[steady])
    logs = tmp_path / "logs"
    srv = ServerProcess(repo, "--inference-log", str(logs), "--inference-log-flush", "0.1",
                        "--hardware-log-interval", "0.1")
    try:
        xs = rng.random((300, 4), dtype=np.float32)
        for i, x in enumerate(xs):
            out = _rest_infer(srv.http, "steady", f"q{i}", x[None])
            assert np.allclose(out["outputs"][0]["data"], x + 1000)
            if i % 30 == 0:
                assert _scrape(srv.control) == 200
    finally:
        assert srv.stop() == 0
    rows = _read(logs)
    assert sorted(r["request_id"] for r in rows) == sorted(f"q{i}" for i in range(300))
    files = [f for _, _, fs in os.walk(logs / "inference") for f in fs]
    assert len(files) > 1 and all(f.startswith(f"part-0-{srv.proc.pid}-") for f in files)  # many flushes
    hw = ds.dataset(str(logs / "hardware"), format="parquet", partitioning="hive").to_table().to_pylist()
    assert len(hw) >= 2 and {r["worker"] for r in hw} == {srv.proc.pid} and all(r["rss_bytes"] > 0 for r in hw)


def test_an_unwritable_log_directory_leaves_serving_alone(tmp_path, rng):
    steady = with_config(steady_package(tmp_path), logging={"sample_rate": 1.0})
    repo = make_repository(tmp_path, extra=[steady])
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    srv = ServerProcess(repo, "--inference-log", str(blocker / "logs"), "--inference-log-flush", "0.1")
    try:
        for i in range(100):
            x = rng.random((1, 4), dtype=np.float32)
            assert np.allclose(_rest_infer(srv.http, "steady", f"q{i}", x)["outputs"][0]["data"], x + 1000)
            time.sleep(0.005)
    finally:
        assert srv.stop() == 0
    reports = [line for line in srv.lines if "inference log: writing under" in line]
    assert len(reports) == 1, "".join(srv.lines)  # once: the next report is due a minute later
    assert "NotADirectoryError" in reports[0] and "serving is unaffected" in reports[0]


@pytest.mark.parametrize("value", ["off", "OFF", ""])
def test_off_means_no_log(value, tmp_path):
    assert inferlog.for_server(ServerSettings(inference_log=value), 0) is None
