"""NVML on a GPU machine: the metrics' GPU series and the inference log's hardware columns.

While torch keeps the device busy, ``/metrics``' NVML collector gives one
``inferline_gpu_utilization_ratio`` and one ``inferline_gpu_memory_used_bytes`` series per GPU,
with plausible values, and the hardware sampler fills ``gpu_util_percent`` / ``gpu_memory_bytes``.
Without a GPU the series are absent and the columns null (tests/python/server/test_metrics.py and
tests/python/inferlog). nvidia-ml-py is not an inferline dependency: the device machine gets it from
bench/gpu/fetch_wheels.sh; missing there (INFERLINE_REQUIRE_GPU=1) it is a failure, elsewhere a skip.
"""

import os
import threading
import time

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def busy_gpu():
    """torch matmuls on device 0 until the test ends (NVML's utilization is a share of ~1 s)."""
    try:
        import pynvml  # noqa: F401  (nvidia-ml-py)
    except ImportError:
        if os.environ.get("INFERLINE_REQUIRE_GPU") == "1":
            pytest.fail("nvidia-ml-py is not installed (bench/gpu/fetch_wheels.sh carries it)", pytrace=False)
        pytest.skip("nvidia-ml-py is not installed")
    import torch

    stop = threading.Event()
    a = torch.randn(4096, 4096, device="cuda")

    def spin():
        while not stop.is_set():
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    time.sleep(1.5)
    yield
    stop.set()
    thread.join()


def _utilization_while_busy(read, tries: int = 20) -> float:
    """The highest utilization `read()` reports over a few samples (NVML updates about every 1/6 s)."""
    best = 0.0
    for _ in range(tries):
        best = max(best, read())
        if best > 0:
            break
        time.sleep(0.2)
    return best


def test_metrics_gpu_series_per_device(busy_gpu):
    from inferline.server.metrics import _Nvml
    import torch

    nvml = _Nvml.open()
    assert nvml is not None, "NVML found no GPU though torch sees one"

    def read():
        util, mem = nvml.families()
        assert util.name == "inferline_gpu_utilization_ratio" and mem.name == "inferline_gpu_memory_used_bytes"
        assert len(util.series) == len(mem.series) >= torch.cuda.device_count()
        assert all(0.0 <= v <= 1.0 for v in util.series.values()), util.series
        assert all(v > 0 for v in mem.series.values()), mem.series  # the matmul's buffers at least
        return util.series[("0",)]

    assert _utilization_while_busy(read) > 0.0


def test_hardware_sampler_gpu_columns(busy_gpu):
    from inferline.inferlog.hardware import HardwareSampler

    sampler = HardwareSampler()

    def read():
        row = sampler()
        assert row["gpu_memory_bytes"] is not None and row["gpu_memory_bytes"] > 0, row
        assert row["gpu_util_percent"] is not None and 0.0 <= row["gpu_util_percent"] <= 100.0, row
        return row["gpu_util_percent"]

    assert _utilization_while_busy(read) > 0.0
