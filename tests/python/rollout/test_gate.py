"""The load-test gate: the candidate alone in a fresh engine, open loop at 2x the peak rate, held
to the model's SLO (p99 and error rate); latencies count from the scheduled send time."""

import asyncio
import json
import math
import os
import time

import numpy as np
import pytest

from inferline.config import SloConfig
from inferline.errors import InvalidArgument
from inferline.models.package import write_golden
from inferline.models.service import open_registry, push
from inferline.rollout import gate
from inferline.rollout.gate import GateResult, gate_rate, open_loop, run_gate
from server_fixtures import slow_model_package, steady_package


@pytest.fixture
def registry(tmp_path):
    reg = open_registry(str(tmp_path / "repository"))
    yield reg
    reg.close()


def test_gate_fails_a_version_too_slow_for_twice_its_peak(tmp_path, registry):
    # ~30 ms a request (0.8 us an iteration here), one at a time: about 30 rps of capacity, offered
    # 2 x 100 rps, so that a machine several times faster still cannot keep up.
    record = push(registry, slow_model_package(tmp_path, iterations=40_000, queue_capacity=4096))
    slo = SloConfig(peak_rps=100.0, p99_ms=100.0)
    rate, _ = gate_rate(slo, observed_peak_rps=None)
    started = time.monotonic()
    result = run_gate(registry, record, rate_rps=rate, slo=slo, seconds=1.5)
    assert time.monotonic() - started < 6  # the backlog does not hold the gate up: timeouts cut it
    assert not result.passed and result.rate_rps == 200 and result.sent == 300
    assert result.p99_ms > 100 and result.p99_ms > result.p50_ms  # queueing shows: latency grows
    assert result.answered + result.errors == result.sent
    assert f"p99 latency {result.p99_ms:.1f} ms is above the SLO's 100 ms" in result.reason
    assert f"measured p99 {result.p99_ms:.1f} ms and error rate {result.error_rate:.2%}" in result.reason
    assert "at 200 rps open loop for 1.5 s" in result.reason
    assert registry.get("slow", record.version) == record  # the gate only reads the registry
    json.dumps(result.to_dict(), allow_nan=False)


def test_gate_passes_a_fast_version_at_a_modest_rate(tmp_path, registry):
    record = push(registry, steady_package(tmp_path))
    slo = SloConfig(p99_ms=500.0, max_error_rate=0.0)  # generous: a busy test machine still passes
    result = run_gate(registry, record, rate_rps=50, slo=slo, seconds=1.5)
    assert result.passed and result.reason == "", result.reason
    assert (result.sent, result.answered, result.errors, result.error_rate) == (75, 75, 0, 0.0)
    assert 0 < result.p50_ms <= result.p99_ms <= 500
    d = result.to_dict()
    assert d["passed"] is True and d["slo_p99_ms"] == 500.0 and d["slo_max_error_rate"] == 0.0
    assert set(d) == {f for f in GateResult.__dataclass_fields__}
    with pytest.raises(InvalidArgument, match=r"^model 'steady' version 1: rate_rps must be a number above 0"):
        run_gate(registry, record, rate_rps=0, slo=slo)
    with pytest.raises(InvalidArgument, match=r"^model 'steady' version 1: seconds must be a number above 0"):
        run_gate(registry, record, rate_rps=10, slo=slo, seconds=-1)


def test_gate_sends_one_row_each_golden_rows_first(tmp_path, registry, monkeypatch):
    """run_gate hands open_loop one-row requests (the golden rows when the package has them, else
    seeded rows fitting the signature) and a timeout of 10 x slo.p99_ms."""
    seen = []

    def fake_open_loop(submit, rate_rps, seconds, inputs, *, timeout_s):
        seen.append((rate_rps, seconds, inputs, timeout_s))
        return {"sent": 4, "answered": 3, "errors": 1, "latencies_ms": [1.0, 2.0, 30.0], "late_starts": 0,
                "error_samples": ["DeadlineExceeded: late"]}

    monkeypatch.setattr(gate, "open_loop", fake_open_loop)
    plain = push(registry, steady_package(tmp_path, name="plain"))
    result = run_gate(registry, plain, rate_rps=8, slo=SloConfig(p99_ms=20, gate_seconds=0.5))
    rate, seconds, rows, timeout_s = seen[-1]
    assert (rate, seconds, timeout_s, len(rows)) == (8, 0.5, 0.2, gate.SYNTHETIC_ROWS)
    assert all(r["x"].shape == (1, 4) and r["x"].dtype == np.float32 for r in rows)
    run_gate(registry, plain, rate_rps=8, slo=SloConfig(p99_ms=20, gate_seconds=0.5))
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(rows, seen[-1][2]))  # seeded
    assert not result.passed and (result.p50_ms, result.p99_ms, result.error_rate) == (2.0, 30.0, 0.25)
    assert result.reason.startswith("p99 latency 30.0 ms is above the SLO's 20 ms; error rate 25.00% is above "
                                    "the SLO's 0.10%: measured p99 30.0 ms")
    assert result.reason.endswith("; first error: DeadlineExceeded: late")

    pkg = steady_package(tmp_path, name="golden")
    golden_x = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_golden(os.path.join(pkg, "golden.npz"), {"x": golden_x}, {"y": golden_x + 1000})
    with open(os.path.join(pkg, "model.json"), encoding="utf-8") as f:
        doc = json.load(f)
    with open(os.path.join(pkg, "model.json"), "w", encoding="utf-8") as f:
        json.dump({**doc, "golden": {"file": "golden.npz"}}, f)
    run_gate(registry, push(registry, pkg), rate_rps=8, slo=SloConfig())
    assert [r["x"].tolist() for r in seen[-1][2]] == [[row] for row in golden_x.tolist()]


def test_open_loop_measures_from_the_scheduled_time():
    """A server that takes 50 ms a request, one at a time, offered one every 25 ms: each send goes
    out on schedule anyway, and latency grows by about 25 ms a request (queueing behind it)."""
    lock, calls = [], []

    async def submit(inputs):
        calls.append(time.monotonic())
        if not lock:
            lock.append(asyncio.Lock())  # made on the open loop's own event loop
        async with lock[0]:
            await asyncio.sleep(0.05)
        return inputs

    out = open_loop(submit, rate_rps=40, seconds=0.75, inputs=[{"x": 1}])
    lat = out["latencies_ms"]
    assert (out["sent"], out["answered"], out["errors"], len(lat)) == (30, 30, 0, 30)
    assert calls[-1] - calls[0] < 0.75 + 0.1  # open loop: closed, 30 sends would take 1.5 s
    assert min(lat) >= 49 and max(lat) > 600  # the last waits behind the 29 before it: about 775 ms
    assert np.mean(lat[-5:]) - np.mean(lat[:5]) > 500
    assert out["error_samples"] == []


async def test_open_loop_counts_failures_and_unanswered_requests_as_errors():
    """From a running event loop (the helper-thread path): a request never answered becomes an
    error at its timeout (no hang), a failing one an error with its message."""

    async def submit(inputs):
        if inputs == "fail":
            raise RuntimeError("backend crashed")
        if inputs == "hang":
            await asyncio.Event().wait()
        return inputs

    started = time.monotonic()
    out = open_loop(submit, rate_rps=40, seconds=0.15, inputs=["ok", "fail", "hang"], timeout_s=0.1)
    assert time.monotonic() - started < 1.0
    assert (out["sent"], out["answered"], out["errors"]) == (6, 2, 4)
    assert out["error_samples"] == ["RuntimeError: backend crashed", "not answered within 0.1 s"]  # distinct
    with pytest.raises(InvalidArgument, match="open_loop: rate_rps must be a number above 0, got nan"):
        open_loop(submit, rate_rps=math.nan, seconds=1, inputs=["ok"])
    with pytest.raises(InvalidArgument, match="open_loop: inputs is empty"):
        open_loop(submit, rate_rps=1, seconds=1, inputs=[])


def test_gate_rate_picks_declared_then_observed_then_floor():
    assert gate_rate(SloConfig(peak_rps=50), observed_peak_rps=80) == \
        (100.0, "2 x the declared peak of 50 rps (slo.peak_rps)")
    rate, why = gate_rate(SloConfig(), observed_peak_rps=80)
    assert rate == 160.0 and why.startswith("2 x the stable version's observed peak of 80 rps")
    for nothing in (None, 0.0, math.nan):
        rate, why = gate_rate(SloConfig(), observed_peak_rps=nothing)
        assert rate == 40.0 and why.startswith("2 x the floor of 20 rps"), nothing
    assert gate_rate(SloConfig(), None, floor_rps=5)[0] == 10.0
    with pytest.raises(InvalidArgument, match="gate_rate: floor_rps must be a number above 0"):
        gate_rate(SloConfig(), None, floor_rps=0)
