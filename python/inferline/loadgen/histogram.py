"""A log-bucketed latency histogram (HDR-style): fixed relative precision, exact merge.

A value v (microseconds, > 0) falls in bucket floor(log(v) / log(1 + precision)), so every bucket
spans the same ratio and any quantile read back is within `precision` / 2 (relative) of a value
actually recorded (the bucket's geometric middle is returned, clamped to the recorded min and max).
Values below 1 us share bucket 0. Two histograms with the same precision merge by adding counts,
so client processes each keep one and the parent adds them: the merged quantiles are those of
all samples together, not an average of per-process quantiles.

Recording costs one log and one dict update; nothing grows with the number of samples.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

DEFAULT_PRECISION = 0.01


class Histogram:
    __slots__ = ("precision", "_inv_log", "counts", "count", "total", "min", "max")

    def __init__(self, precision: float = DEFAULT_PRECISION):
        if not 0 < precision < 1:
            raise ValueError(f"precision must be in (0, 1), got {precision}")
        self.precision = precision
        self._inv_log = 1.0 / math.log1p(precision)
        self.counts: Dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, value_us: float) -> None:
        index = int(math.log(value_us) * self._inv_log) if value_us > 1.0 else 0
        counts = self.counts
        counts[index] = counts.get(index, 0) + 1
        self.count += 1
        self.total += value_us
        if value_us > self.max:
            self.max = value_us
        if value_us < self.min:
            self.min = value_us

    def record_many(self, values_us: Iterable[float]) -> None:
        for v in values_us:
            self.record(v)

    def merge(self, other: "Histogram") -> "Histogram":
        if other.precision != self.precision:
            raise ValueError(f"cannot merge histograms of precision {self.precision} and {other.precision}")
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def quantile(self, q: float) -> Optional[float]:
        """The value at quantile q (0..1): that of the sample of rank ceil(q * count) (at least 1),
        within precision / 2; None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(round(q * self.count, 6)))  # round: 0.999 * 18000 is not 17982.000...04
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return self._value(index)
        return self.max

    def _value(self, index: int) -> float:
        middle = 1.0 if index == 0 else math.exp((index + 0.5) / self._inv_log)
        return min(max(middle, self.min), self.max)

    @property
    def mean(self) -> Optional[float]:
        return self.total / self.count if self.count else None

    def summary(self) -> dict:
        """count, mean, p50, p90, p99, p99.9, max (microseconds)."""
        out = {"count": self.count, "mean_us": self.mean, "min_us": self.min if self.count else None}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)):
            out[f"{name}_us"] = self.quantile(q)
        out["max_us"] = self.max if self.count else None
        return out

    # ---- across processes (pickle-free, JSON-safe) ----------------------------------------
    def to_dict(self) -> dict:
        return {"precision": self.precision, "counts": [[k, v] for k, v in self.counts.items()],
                "count": self.count, "total": self.total, "min": self.min if self.count else None,
                "max": self.max}

    @classmethod
    def from_dict(cls, d: dict) -> "Histogram":
        h = cls(d["precision"])
        h.counts = {int(k): int(v) for k, v in d["counts"]}
        h.count, h.total, h.max = int(d["count"]), float(d["total"]), float(d["max"])
        h.min = math.inf if d["min"] is None else float(d["min"])
        return h
