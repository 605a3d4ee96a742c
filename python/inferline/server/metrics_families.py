"""Metric families as plain data: built at scrape time, combined across workers, rendered once.

A ``Family`` is one metric (name, kind, help, label names) with its series keyed by label values.
Values are floats for counters and gauges and ``(cumulative bucket counts, sum)`` for histograms,
with the bucket bounds kept on the family. Being plain data, a worker's families travel to the
worker that answers a scrape as JSON (``to_json``/``from_json``) and add up there (``combine``),
and ``PromCollector`` hands the result to prometheus-client, which writes the exposition format.

How series of several workers combine (``Family.combine``): counters and histograms add up
(``"sum"``); gauges either add up (``"sum"``: e.g. requests in flight), or are the same fact seen
from every worker and are taken once (``"max"``: e.g. a canary's weight), or describe one worker
and keep a ``worker`` label (``"worker"``, the default for gauges: e.g. resident memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

COMBINE = ("sum", "max", "worker")


@dataclass
class Family:
    name: str
    """Without the ``_total`` suffix for counters (prometheus-client adds it)."""
    kind: str
    """"counter", "gauge" or "histogram"."""
    help: str
    labels: Tuple[str, ...] = ()
    bounds: Tuple[float, ...] = ()
    """Histograms: the finite bucket bounds (seconds or rows), increasing; +Inf is implied."""
    combine: str = ""
    """How workers' series combine (module docstring); "" = "sum" for counters and histograms,
    "worker" for gauges."""
    series: Dict[tuple, object] = field(default_factory=dict)

    def __post_init__(self):
        if not self.combine:
            self.combine = "worker" if self.kind == "gauge" else "sum"
        assert self.kind in ("counter", "gauge", "histogram") and self.combine in COMBINE, (self.kind, self.combine)

    def add(self, labels: Sequence, value) -> None:
        """One series; ``labels`` in the order of ``self.labels`` (converted to text)."""
        self.series[tuple(str(v) for v in labels)] = value

    def add_histogram(self, labels: Sequence, cumulative: Sequence[int], total_sum: float) -> None:
        """``cumulative``: counts at or below each of ``self.bounds``, then the total (+Inf)."""
        assert len(cumulative) == len(self.bounds) + 1, (self.name, len(cumulative), len(self.bounds))
        self.add(labels, (list(cumulative), float(total_sum)))


def rebucket(core_buckets: Iterable[Tuple[int, int]], bounds_us: Sequence[float]) -> List[int]:
    """Cumulative counts at each bound (µs) from the core's non-empty buckets ``(largest value,
    count)`` (``stats()[...]["buckets"]``), then the total. A core bucket counts below bound b when
    all of it is below b (largest value + 1 <= b, the core's values being whole µs, truncated):
    exact where b is one of the core's bucket bounds, conservative elsewhere."""
    out = [0] * (len(bounds_us) + 1)
    i = 0
    running = 0
    for upper, count in core_buckets:  # increasing `upper`
        while i < len(bounds_us) and upper + 1 > bounds_us[i]:
            out[i] = running
            i += 1
        running += count
    while i < len(bounds_us):
        out[i] = running
        i += 1
    out[-1] = running
    return out


def combine(per_worker: Sequence[Tuple[str, List[Family]]]) -> List[Family]:
    """One list of families from every worker's ``(worker id, families)``, per each family's
    ``combine``; a family's kind, help and labels are taken from the first worker that has it."""
    merged: Dict[str, Family] = {}
    for worker, families in per_worker:
        for fam in families:
            out = merged.get(fam.name)
            if out is None:
                labels = fam.labels + (("worker",) if fam.combine == "worker" else ())
                out = merged[fam.name] = Family(fam.name, fam.kind, fam.help, labels, fam.bounds, fam.combine)
            if out.bounds != fam.bounds or out.kind != fam.kind:
                continue  # a worker of another build: its series would not add up
            for key, value in fam.series.items():
                if out.combine == "worker":
                    out.series[key + (str(worker),)] = value
                elif key not in out.series:
                    out.series[key] = value
                elif out.kind == "histogram":
                    (a, s1), (b, s2) = out.series[key], value
                    out.series[key] = ([x + y for x, y in zip(a, b)], s1 + s2)
                elif out.combine == "sum":
                    out.series[key] = out.series[key] + value
                else:
                    out.series[key] = max(out.series[key], value)
    return list(merged.values())


def to_json(families: Sequence[Family]) -> list:
    return [{"name": f.name, "kind": f.kind, "help": f.help, "labels": list(f.labels), "bounds": list(f.bounds),
             "combine": f.combine, "series": [[list(k), v] for k, v in f.series.items()]} for f in families]


def from_json(data: list) -> List[Family]:
    out = []
    for d in data:
        fam = Family(d["name"], d["kind"], d["help"], tuple(d["labels"]), tuple(d["bounds"]), d["combine"])
        for key, value in d["series"]:
            fam.series[tuple(key)] = (list(value[0]), value[1]) if fam.kind == "histogram" else value
        out.append(fam)
    return out


def _le(bound: float) -> str:
    return repr(float(bound)) if math.isfinite(bound) else "+Inf"


def to_prometheus(fam: Family):
    """The prometheus-client metric family of ``fam``."""
    if fam.kind == "counter":
        out = CounterMetricFamily(fam.name, fam.help, labels=fam.labels)
        for key, value in fam.series.items():
            out.add_metric(key, value)
    elif fam.kind == "gauge":
        out = GaugeMetricFamily(fam.name, fam.help, labels=fam.labels)
        for key, value in fam.series.items():
            out.add_metric(key, value)
    else:
        out = HistogramMetricFamily(fam.name, fam.help, labels=fam.labels)
        les = [_le(b) for b in fam.bounds] + ["+Inf"]
        for key, (cumulative, total_sum) in fam.series.items():
            out.add_metric(key, list(zip(les, cumulative)), total_sum)
    return out


def from_prometheus(metrics: Iterable, combine_gauges: str = "worker") -> List[Family]:
    """Families of prometheus-client's own collectors (process metrics): counters and gauges
    without labels, others skipped."""
    out = []
    for m in metrics:
        if m.type not in ("counter", "gauge") or not m.samples or any(s.labels for s in m.samples):
            continue
        value = next((s.value for s in m.samples if s.name in (m.name, m.name + "_total")), None)
        if value is None:
            continue
        fam = Family(m.name, m.type, m.documentation, combine=combine_gauges if m.type == "gauge" else "sum")
        fam.add((), value)
        out.append(fam)
    return out


class PromCollector:
    """A prometheus-client collector over a function that returns ``Family`` lists."""

    def __init__(self, families_fn):
        self._families = families_fn

    def collect(self):
        for fam in self._families():
            yield to_prometheus(fam)

    def describe(self):
        return []  # no describe-time collection: families exist only at scrape time


def find(families: Sequence[Family], name: str) -> Optional[Family]:
    return next((f for f in families if f.name == name), None)
