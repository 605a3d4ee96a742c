"""GPU memory charged to loaded versions, and the budget an engine may hold them to.

    budget = GpuMemoryBudget(limit_bytes=8 << 30)      # None: unlimited (loads are still measured)
    with budget.loading("m", 2, device=0, estimate=estimate_load(config, artifact_bytes, 0),
                        loaded=engine.models()) as load:
        ...load the version, warm it up...
        load.settle(core_bytes)                         # measures; charges it, or GpuBudgetExceeded

The budget (``inferline serve --gpu-memory-budget``) holds for each CUDA device separately: a
version loads only when what the versions on its device are charged, plus its estimate, stays
within it. The estimate (``LoadEstimate``) is the artifact's size plus the buffers the core
allocates for the model (backends/gpu.core_buffer_bytes). The charge is measured: the growth of
``measure(device)`` across the load (default ``torch_reserved_bytes``: torch's reserved memory,
which holds the module's weights and its CUDA graph pools) plus the core's own device buffers,
and never less than the artifact (a runtime whose allocations torch does not see still pays its
weights). If the charge exceeds what was left, the caller unloads the version and the load is
refused the same way. Loads are measured one at a time per process (a process-wide lock), so one
load's growth is never another's; requests to other models during the window can still move the
reading a little, and CUDA graphs first captured after the load (a batch size that arrives
later) are not charged.

A version swap loads the new version before the old one is released, so that the model never
stops answering: under a budget both must fit. When they do not, the refusal says so and the
old version keeps serving (a version that fails to load never replaces a working one).
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple

from ..backends.gpu import core_buffer_bytes, format_bytes
from ..config import ModelConfig
from ..errors import InvalidArgument, ResourceExhausted

_LOAD_LOCK = threading.Lock()  # process-wide: one GPU load is measured at a time

_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", start=1):
    _UNITS.update({_p: 1000 ** _i, _p + "b": 1000 ** _i, _p + "i": 1024 ** _i, _p + "ib": 1024 ** _i})


class GpuBudgetExceeded(ResourceExhausted):
    """A GPU version's estimate, or its measured use, does not fit in what is left of the budget.
    The message starts with what the load needs (the caller names the model and version)."""


def parse_size(text) -> int:
    """Bytes from "1073741824", "512M", "1.5G" (K, M, G, T: powers of 1000) or "8GiB" ("Ki", "KiB", ...:
    powers of 1024); at least 1 byte."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise InvalidArgument(f"{str(text)[:40]!r} is not a size: give bytes, or a number with K, M, G, T (powers "
                              f"of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 8GiB")
    try:
        value = int(Decimal(m.group(1)) * unit)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise InvalidArgument(f"{text!r} is not a size") from None
    if value < 1:
        raise InvalidArgument(f"{text!r}: a size is at least 1 byte")
    return value


def torch_reserved_bytes(device: int) -> int:
    """torch's reserved memory on CUDA device `device` (0 when torch is not imported or has not
    initialised CUDA): the default ``measure`` of a budget."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    try:
        if not torch.cuda.is_initialized():
            return 0
        return int(torch.cuda.memory_reserved(device))
    except Exception:  # a torch without CUDA: nothing reserved
        return 0


@dataclass(frozen=True)
class LoadEstimate:
    """What a GPU version is expected to take before it loads."""

    artifact_bytes: int
    buffer_bytes: int
    """The core's buffers: max_batch_size rows x the row bytes (backends/gpu.core_buffer_bytes) x instances."""
    rows: int
    instances: int

    @property
    def total(self) -> int:
        return self.artifact_bytes + self.buffer_bytes

    def text(self) -> str:
        return (f"{format_bytes(self.total)} (the artifact {format_bytes(self.artifact_bytes)} + the core's buffers "
                f"{format_bytes(self.buffer_bytes)} for {self.rows} rows x {self.instances} instance(s))")


def estimate_load(config: ModelConfig, artifact_bytes: int, gpu_device: int) -> LoadEstimate:
    """The estimate of `config` on a GPU with an artifact of `artifact_bytes`."""
    instances = config.instances_on(gpu_device)
    return LoadEstimate(int(artifact_bytes), core_buffer_bytes(config, instances),
                        int(config.batching.max_batch_size), instances)


class GpuMemoryBudget:
    """The GPU memory charged to each loaded (name, version), and the limit per device (None: none).

    `measure(device) -> bytes` is read before and after each load (default torch_reserved_bytes).
    Thread-safe; ``limit_bytes`` may be changed at any time (it applies to the next load)."""

    def __init__(self, limit_bytes: Optional[int] = None, measure: Optional[Callable[[int], int]] = None):
        if limit_bytes is not None and (isinstance(limit_bytes, bool) or int(limit_bytes) < 1):
            raise InvalidArgument(f"GPU memory budget: at least 1 byte, got {limit_bytes!r}")
        self.limit_bytes = None if limit_bytes is None else int(limit_bytes)
        self.measure = measure or torch_reserved_bytes
        self._lock = threading.Lock()  # guards _charges
        self._charges: Dict[Tuple[str, int], Tuple[int, int]] = {}  # (name, version) -> (device, bytes)

    # ---- what is charged ------------------------------------------------------------
    def charged(self, name: str, version: int) -> Optional[int]:
        """Bytes charged to a loaded version; None if it was not loaded through the budget."""
        entry = self._charges.get((name, int(version)))
        return None if entry is None else entry[1]

    def charges(self, device: Optional[int] = None) -> Dict[Tuple[str, int], int]:
        """{(name, version): bytes} on `device` (every device when None)."""
        with self._lock:
            return {k: b for k, (d, b) in self._charges.items() if device is None or d == device}

    def used(self, device: int) -> int:
        return sum(self.charges(device).values())

    def left(self, device: int) -> Optional[int]:
        """What the budget leaves on `device`; None when unlimited."""
        return None if self.limit_bytes is None else self.limit_bytes - self.used(device)

    def release(self, name: str, version: int) -> None:
        with self._lock:
            self._charges.pop((name, int(version)), None)

    def forget_unloaded(self, loaded: Iterable[Tuple[str, int]]) -> None:
        """Drops the charges of versions not in `loaded` ((name, version) pairs: what the engine holds)."""
        keep = {(n, int(v)) for n, v in loaded}
        with self._lock:
            for key in [k for k in self._charges if k not in keep]:
                del self._charges[key]

    # ---- loading ----------------------------------------------------------------------
    @contextlib.contextmanager
    def loading(self, name: str, version: int, device: int, estimate: LoadEstimate,
                loaded: Optional[Iterable[Tuple[str, int]]] = None) -> Iterator["GpuLoad"]:
        """Admits one load by its estimate (GpuBudgetExceeded if it cannot fit) and measures it:
        call ``settle`` on the yielded GpuLoad once the version is loaded and warmed up. Holds the
        process-wide load lock throughout. `loaded`: what the engine holds now (stale charges go)."""
        with _LOAD_LOCK:
            if loaded is not None:
                self.forget_unloaded(loaded)
            left = self.left(device)
            if left is not None and estimate.total > left:
                raise GpuBudgetExceeded(self._refusal(name, version, device, left,
                                                      f"loading needs an estimated {estimate.text()}"))
            yield GpuLoad(self, name, int(version), int(device), estimate, left, int(self.measure(device)))

    def _charge(self, name: str, version: int, device: int, nbytes: int) -> None:
        with self._lock:
            self._charges[(name, version)] = (device, int(nbytes))

    def _refusal(self, name: str, version: int, device: int, left: int, need: str) -> str:
        others = sorted(self.charges(device).items())
        uses = ", ".join(f"{n}:{v} {format_bytes(b)}" for (n, v), b in others) or "nothing"
        text = (f"{need} on cuda:{device}, but the GPU memory budget "
                f"(--gpu-memory-budget {format_bytes(self.limit_bytes)}) has {format_bytes(max(left, 0))} left "
                f"there (in use: {uses})")
        same = [str(v) for (n, v), _ in others if n == name]
        if same:
            text += (f"; it would replace version {', '.join(same)} of {name!r}, which keeps serving: a new version "
                     f"is loaded before the old one is released, so both must fit (raise the budget, or unload "
                     f"the old version first)")
        return text


class GpuLoad:
    """One admitted load (``GpuMemoryBudget.loading``): ``settle`` measures and charges it."""

    def __init__(self, budget: GpuMemoryBudget, name: str, version: int, device: int, estimate: LoadEstimate,
                 left: Optional[int], before: int):
        self.budget, self.name, self.version, self.device = budget, name, version, device
        self.estimate, self.left, self.before = estimate, left, before
        self.charged: Optional[int] = None
        """Bytes charged once settled."""

    def settle(self, core_bytes: int) -> int:
        """Charges the version the growth of the reading + `core_bytes` (the core's device buffers),
        at least the artifact's size; GpuBudgetExceeded (nothing charged) past what was left."""
        grown = max(0, int(self.budget.measure(self.device)) - self.before)
        charge = max(grown + int(core_bytes), self.estimate.artifact_bytes)
        if self.left is not None and charge > self.left:
            raise GpuBudgetExceeded(self.budget._refusal(
                self.name, self.version, self.device, self.left,
                f"loading took {format_bytes(charge)} (measured: {format_bytes(grown)} through the runtime + "
                f"{format_bytes(core_bytes)} of the core's buffers; estimated {format_bytes(self.estimate.total)})"))
        self.budget._charge(self.name, self.version, self.device, charge)
        self.charged = charge
        return charge
