"""Hardware samples of this server process: CPU, resident memory, and GPUs through NVML when present.

``HardwareSampler()()`` returns one row of ``schema.HARDWARE``. CPU is the process's user+system
time since the previous sample over the wall time between them (100 = one core busy); memory is
the resident set from /proc (Linux). The GPU columns come from NVML (the ``pynvml`` module of
nvidia-ml-py, used only when it is importable and finds a device) and are null otherwise.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import resource
import time
from typing import Optional

log = logging.getLogger("inferline.inferlog")


class HardwareSampler:
    def __init__(self):
        self.pid = os.getpid()
        self._cpu0 = _cpu_s()
        self._wall0 = time.monotonic()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._nvml = _open_nvml()

    def __call__(self) -> dict:
        cpu, wall = _cpu_s(), time.monotonic()
        elapsed = wall - self._wall0
        cpu_percent = 100.0 * (cpu - self._cpu0) / elapsed if elapsed > 0 else 0.0
        self._cpu0, self._wall0 = cpu, wall
        util, memory = self._gpu()
        return {"ts": _dt.datetime.now(_dt.timezone.utc), "worker": self.pid, "cpu_percent": cpu_percent,
                "rss_bytes": self._rss(), "gpu_util_percent": util, "gpu_memory_bytes": memory}

    def _rss(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):  # not Linux: the peak, which is what is left
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _gpu(self) -> tuple:
        if self._nvml is None:
            return None, None
        nvml, handles = self._nvml
        try:
            utils = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
            used = sum(int(nvml.nvmlDeviceGetMemoryInfo(h).used) for h in handles)
        except Exception:  # a device gone or NVML failing: the columns stay null
            return None, None
        return float(sum(utils)) / len(utils), used


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _open_nvml() -> Optional[tuple]:
    """(pynvml, device handles), or None without nvidia-ml-py or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as e:
        log.info("inference log: no GPU samples (NVML: %s)", e)
        return None
    return (pynvml, handles) if handles else None
