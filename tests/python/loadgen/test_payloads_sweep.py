"""Request payloads (random data fitting the metadata, .npz rows, ids on streamed requests) and
the sweep's search, without a server (the command against a real server: tests/python/cli/test_bench.py)."""

import json

import numpy as np
import pytest

from inferline.errors import InferlineError
from inferline.loadgen import BenchConfig, Target
from inferline.loadgen.payloads import encode, npz_inputs, npz_metadata, random_inputs, with_id
from inferline.loadgen.sweep import sweep
from inferline.server.proto import inference_pb2 as pb

META = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]},
                   {"name": "ids", "datatype": "INT64", "shape": [-1, 2, -1]},
                   {"name": "text", "datatype": "BYTES", "shape": [1]}]}
TYPES = {s["name"]: s["datatype"] for s in META["inputs"]}


def test_random_inputs_fit_the_metadata_and_are_seeded():
    a = random_inputs(META, batch=3, count=5, seed=7)
    b = random_inputs(META, batch=3, count=5, seed=7)
    assert len(a) == 5
    assert a[0]["pixels"].shape == (3, 64) and a[0]["pixels"].dtype == np.float32
    assert a[0]["ids"].shape == (3, 2, 1) and a[0]["ids"].dtype == np.int64
    assert a[0]["text"].shape == (1,) and isinstance(a[0]["text"][0], bytes)
    assert all(np.array_equal(x["pixels"], y["pixels"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["pixels"], a[1]["pixels"])


def test_grpc_encoding_round_trips_and_ids_append():
    req = random_inputs(META, batch=2, count=1, seed=0)[0]
    raw = encode(Target("h:1", "grpc", "m", "3"), [req], TYPES)[0]
    msg = pb.ModelInferRequest.FromString(with_id(with_id(raw, 41), 12345))
    assert msg.model_name == "m" and msg.model_version == "3" and msg.id == "12345"
    assert [i.name for i in msg.inputs] == ["pixels", "ids", "text"]
    assert np.array_equal(np.frombuffer(msg.raw_input_contents[0], np.float32).reshape(2, 64), req["pixels"])
    assert msg.raw_input_contents[2] == len(req["text"][0]).to_bytes(4, "little") + req["text"][0]


def test_rest_encoding_is_kserve_json():
    req = random_inputs(META, batch=1, count=1, seed=0)[0]
    body = json.loads(encode(Target("http://h:1", "rest", "m"), [req], TYPES)[0])
    first = body["inputs"][0]
    assert first["name"] == "pixels" and first["shape"] == [1, 64] and first["datatype"] == "FP32"
    assert np.allclose(first["data"], req["pixels"].reshape(-1))


def test_npz_rows_cycle_in_batches(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, pixels=np.arange(5 * 64, dtype=np.float64).reshape(5, 64), other=np.zeros(5))
    meta = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]}
    reqs = npz_inputs(str(path), meta, batch=2)
    assert len(reqs) == 5  # 5 rows in batches of 2: every row starts one request, wrapping around
    assert reqs[0]["pixels"].dtype == np.float32
    assert [r["pixels"][:, 0].tolist() for r in reqs[:3]] == [[0, 64], [128, 192], [256, 0]]
    assert npz_metadata(str(path))["inputs"][0] == {"name": "pixels", "datatype": "FP64", "shape": [-1, 64]}
    with pytest.raises(InferlineError, match="no array for input"):
        npz_inputs(str(path), {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]}, 1)
    with pytest.raises(InferlineError, match="--inputs"):
        npz_inputs(str(tmp_path / "missing.npz"), meta, 1)


def model_server(capacity_rps):
    """A sweep step against a server whose p99 grows as the rate nears its capacity (a pure
    function: the search's logic, not a server, is under test here)."""
    def run(config):
        rate = config.rate
        over = rate >= capacity_rps
        p99 = 1000.0 if over else 1.0 / (1 - rate / capacity_rps)
        return {"offered_rps": rate, "throughput_rps": min(rate, capacity_rps), "requests": int(rate),
                "errors": {}, "latency_ms": {"p50": p99 / 2, "p99": p99}}
    return run


@pytest.mark.parametrize("capacity,start", [(1000.0, 100.0), (1000.0, 5000.0), (30.0, 100.0)])
def test_sweep_brackets_then_bisects_to_the_target(capacity, start):
    config = BenchConfig(Target("h:1", "grpc", "m"), rate=start)
    target_ms = 4.0  # met below 75% of capacity
    steps, best = sweep(config, model_server(capacity), target_ms, start_rps=start, max_steps=20)
    assert best is not None and best["latency_ms"]["p99"] <= target_ms
    assert all(s["meets"] == (s["latency_ms"]["p99"] <= target_ms) for s in steps)
    assert 0.75 * capacity * 0.9 <= best["offered_rps"] <= 0.75 * capacity
    assert len(steps) <= 20


def test_sweep_stops_when_nothing_meets_the_target():
    config = BenchConfig(Target("h:1", "grpc", "m"), rate=100)
    steps, best = sweep(config, model_server(1000.0), 0.5, start_rps=100, max_steps=30)
    assert best is None and 1 < len(steps) <= 30 and min(s["offered_rps"] for s in steps) < 100 / 32
