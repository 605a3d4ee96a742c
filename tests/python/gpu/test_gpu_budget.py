"""The GPU memory budget's accounting (engine/gpu_memory.py), with an injected measuring function:
estimates, charges, refusals and their messages, swaps, the process-wide load lock; and the size
syntax of --gpu-memory-budget. Runs on the CPU."""

import dataclasses
import threading
import time

import pytest

import inferline as il
from inferline.demo_models import demo_package_path
from inferline.engine.gpu_memory import GpuBudgetExceeded, GpuMemoryBudget, LoadEstimate, estimate_load, parse_size
from inferline.errors import InvalidArgument, ResourceExhausted
from inferline.models import load_into_engine, load_package

MiB = 1 << 20


class Meter:
    """A device's reading; a load 'allocates' by moving it."""

    def __init__(self):
        self.reading = {0: 0, 1: 0}
        self.calls = []

    def __call__(self, device: int) -> int:
        self.calls.append(device)
        return self.reading[device]


def estimate(total_mib: int, artifact_mib: int = 0) -> LoadEstimate:
    return LoadEstimate(artifact_mib * MiB, (total_mib - artifact_mib) * MiB, rows=32, instances=2)


def load(budget: GpuMemoryBudget, meter: Meter, name: str, version: int, *, device=0, est=10, grow=10, core=0):
    """Loads through the budget: the reading grows by `grow` MiB, the core's buffers are `core` MiB."""
    with budget.loading(name, version, device, estimate(est)) as admitted:
        meter.reading[device] += grow * MiB
        return admitted.settle(core * MiB)


def test_the_estimate_is_the_artifact_plus_the_cores_buffers():
    config = il.ModelConfig(
        name="m", inputs=[("x", "float32", (-1, 8)), ("img", "uint8", (-1, 4, 4, 3))],
        outputs=[("y", "float32", (-1, 10))], batching=il.BatchingConfig(max_batch_size=16),
        preprocessing={"img": il.ImagePreprocess(height=2, width=2, mean=(0.0,), std=(1.0,))})
    # rows: request 8*4 + 4*4*3 = 80 B, backend 8*4 + 3*2*2*4 = 80 B, outputs 40 B -> 2*80 + 80 + 2*40 = 320 B
    est = estimate_load(config, 1000, gpu_device=0)
    assert (est.rows, est.instances, est.buffer_bytes, est.total) == (16, 2, 320 * 16 * 2, 1000 + 10240)
    assert estimate_load(dataclasses.replace(config, instances=1), 0, 0).buffer_bytes == 320 * 16
    assert "the artifact 1000 B + the core's buffers 10.0 KiB for 16 rows x 2 instance(s)" in est.text()


def test_a_load_is_charged_its_growth_plus_the_cores_buffers():
    meter = Meter()
    budget = GpuMemoryBudget(100 * MiB, measure=meter)
    assert load(budget, meter, "a", 1, grow=30, core=5) == 35 * MiB
    assert budget.charged("a", 1) == 35 * MiB and budget.used(0) == 35 * MiB and budget.left(0) == 65 * MiB
    assert budget.charges() == {("a", 1): 35 * MiB}
    assert meter.calls == [0, 0]  # before and after


def test_without_a_limit_loads_are_still_measured():
    meter = Meter()
    budget = GpuMemoryBudget(None, measure=meter)
    assert load(budget, meter, "a", 1, est=10_000, grow=7) == 7 * MiB
    assert budget.left(0) is None and budget.charged("a", 1) == 7 * MiB


def test_the_charge_is_at_least_the_artifact():
    meter = Meter()
    budget = GpuMemoryBudget(None, measure=meter)
    with budget.loading("a", 1, 0, estimate(12, artifact_mib=8)) as admitted:
        assert admitted.settle(0) == 8 * MiB  # a runtime whose memory torch does not see


def test_an_estimate_that_does_not_fit_is_refused_before_loading():
    meter = Meter()
    budget = GpuMemoryBudget(100 * MiB, measure=meter)
    load(budget, meter, "other", 3, grow=70)
    ran = []
    with pytest.raises(GpuBudgetExceeded) as e:
        with budget.loading("a", 1, 0, estimate(40, artifact_mib=25)):
            ran.append(True)
    assert not ran and isinstance(e.value, ResourceExhausted)
    msg = str(e.value)
    assert msg.startswith("loading needs an estimated 40.0 MiB (the artifact 25.0 MiB + the core's buffers 15.0 MiB")
    assert "on cuda:0, but the GPU memory budget (--gpu-memory-budget 100.0 MiB) has 30.0 MiB left" in msg
    assert "in use: other:3 70.0 MiB" in msg
    assert "replace" not in msg  # another model: no swap
    assert budget.charges() == {("other", 3): 70 * MiB}


def test_a_measured_use_past_what_was_left_is_refused_and_not_charged():
    meter = Meter()
    budget = GpuMemoryBudget(50 * MiB, measure=meter)
    with pytest.raises(GpuBudgetExceeded, match=r"loading took 60.0 MiB \(measured: 55.0 MiB through the runtime "
                                                r"\+ 5.0 MiB of the core's buffers; estimated 10.0 MiB\) on cuda:0, "
                                                r"but the GPU memory budget .* has 50.0 MiB left there \(in use: "
                                                r"nothing\)"):
        load(budget, meter, "a", 1, est=10, grow=55, core=5)
    assert budget.charges() == {}


def test_a_swap_that_does_not_fit_says_the_old_version_keeps_serving():
    meter = Meter()
    budget = GpuMemoryBudget(100 * MiB, measure=meter)
    load(budget, meter, "m", 1, grow=60)
    with pytest.raises(GpuBudgetExceeded) as e:
        load(budget, meter, "m", 2, est=50)
    assert "it would replace version 1 of 'm', which keeps serving: a new version is loaded before the old one " \
           "is released, so both must fit" in str(e.value)
    assert budget.charges() == {("m", 1): 60 * MiB}
    assert load(budget, meter, "m", 2, est=40, grow=40) == 40 * MiB  # both fit: loaded beside it
    assert budget.used(0) == 100 * MiB


def test_unloaded_versions_stop_counting():
    meter = Meter()
    budget = GpuMemoryBudget(100 * MiB, measure=meter)
    load(budget, meter, "m", 1, grow=60)
    load(budget, meter, "n", 1, grow=30)
    budget.forget_unloaded([("n", 1)])  # what the engine holds now
    assert budget.charges() == {("n", 1): 30 * MiB}
    with budget.loading("m", 2, 0, estimate(70), loaded=[("n", 1)]) as admitted:  # `loaded` prunes too
        admitted.settle(0)
    budget.release("n", 1)
    assert budget.charges() == {("m", 2): 0}


def test_each_device_has_its_own_budget():
    meter = Meter()
    budget = GpuMemoryBudget(100 * MiB, measure=meter)
    load(budget, meter, "a", 1, device=0, grow=90)
    assert load(budget, meter, "b", 1, device=1, est=90, grow=90) == 90 * MiB
    assert (budget.used(0), budget.used(1)) == (90 * MiB, 90 * MiB)
    with pytest.raises(GpuBudgetExceeded, match=r"on cuda:1, .* \(in use: b:1 90.0 MiB\)"):
        load(budget, meter, "c", 1, device=1, est=20)


def test_a_lower_limit_applies_to_the_next_load():
    meter = Meter()
    budget = GpuMemoryBudget(None, measure=meter)
    load(budget, meter, "a", 1, grow=50)
    budget.limit_bytes = 55 * MiB
    with pytest.raises(GpuBudgetExceeded, match="has 5.0 MiB left"):
        load(budget, meter, "b", 1, est=10)


def test_loads_are_measured_one_at_a_time():
    meter = Meter()
    budget = GpuMemoryBudget(None, measure=meter)
    inside, overlaps = [], []

    def one(name):
        with budget.loading(name, 1, 0, estimate(1)) as admitted:
            overlaps.append(len(inside))
            inside.append(name)
            time.sleep(0.02)
            meter.reading[0] += MiB
            inside.remove(name)
            admitted.settle(0)

    threads = [threading.Thread(target=one, args=(f"m{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert overlaps == [0, 0, 0, 0]
    assert all(b == MiB for b in budget.charges().values()) and len(budget.charges()) == 4


@pytest.mark.parametrize("limit", [0, -5, True])
def test_a_budget_is_at_least_one_byte(limit):
    with pytest.raises(InvalidArgument, match="at least 1 byte"):
        GpuMemoryBudget(limit)


@pytest.mark.parametrize("text, expected", [
    ("1073741824", 1 << 30), ("512M", 512_000_000), ("512MB", 512_000_000), ("8GiB", 8 << 30), ("8gi", 8 << 30),
    ("1.5G", 1_500_000_000), ("0.5 KiB", 512), ("2T", 2 * 10 ** 12), ("3TiB", 3 << 40), (" 64 K ", 64_000), ("1b", 1),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "8XB", "-1G", "1e9", "0", "0.1", "8 GiB extra", "nan"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InvalidArgument, match="is not a size|at least 1 byte"):
        parse_size(text)


def test_a_model_on_the_cpu_is_not_charged(engine):
    package = load_package(demo_package_path("digits-logreg"))
    handle, report = load_into_engine(engine, package, 1)
    assert report.gpu_memory_bytes == 0 and "gpu_memory_bytes" not in report.runtime_env
    assert engine.gpu_memory.charges() == {}
    assert handle.stats()["gpu_memory_bytes"] == 0
    memory = handle.gpu_memory()
    assert (memory["device_bytes"], memory["pinned_bytes"], memory["charged_bytes"]) == (0, 0, None)
