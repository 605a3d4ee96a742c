"""The inference logs, read for ``inferline report``: Parquet files under
``ROOT/inference/date=YYYY-MM-DD/model=NAME/part-*.parquet`` (the layout and schema that
inferline.inferlog writes; read here with pyarrow.dataset, pruned by date, never through the
writer's code), turned into per-model series over time bins.

    table = read_inference(root, start, end)            # the columns the report uses, start <= ts < end
    per_model = aggregate(table, edges)                 # {model: ModelSeries}

Records: ``kind`` "sample" (a sampled request: latency, fallback), "canary_pair" / "shadow_pair"
(one request seen by two versions: ``agree``); ``label`` (feedback) with ``predicted`` gives
accuracy per ``arm``. Sampled counts are a share of the traffic (``logging.sample_rate``), so the
throughput drawn from logs is records per second, not requests per second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

SCHEMA = pa.schema([("ts", pa.timestamp("us", "UTC")), ("model", pa.string()), ("version", pa.int64()),
                    ("arm", pa.string()), ("kind", pa.string()), ("predicted", pa.int64()),
                    ("latency_ms", pa.float64()), ("fallback_reason", pa.string()), ("agree", pa.bool_()),
                    ("label", pa.int64()), ("date", pa.string())])
"""The columns the report reads (of the log's schema) and the date partition: given, not inferred
from a file, so only the files of the dates in range are opened."""
DEFAULT_ROOT = os.path.join(os.path.expanduser("~"), ".inferline", "logs")
"""Where `inferline serve` writes its inference log unless told (--inference-log)."""


def read_inference(root: str, start: datetime, end: datetime) -> Optional[pa.Table]:
    """Records with start <= ts < end (aware datetimes), only the partitions of those dates read;
    None when ROOT has no inference table."""
    base = os.path.join(root, "inference")
    if not os.path.isdir(base):
        return None
    dates = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")  # model= is a column already
    dataset = ds.dataset(base, schema=SCHEMA, format="parquet", partitioning=dates)
    first, last = start.astimezone(timezone.utc).date(), end.astimezone(timezone.utc).date()
    wanted = [str(first + timedelta(days=i)) for i in range((last - first).days + 1)]
    ts = ds.field("ts")
    where = ds.field("date").isin(wanted) & (ts >= pa.scalar(start, pa.timestamp("us", "UTC"))) & \
        (ts < pa.scalar(end, pa.timestamp("us", "UTC")))
    return dataset.to_table(columns=SCHEMA.names[:-1], filter=where)


MIN_PER_BIN = 20
"""Records per bin wanted: a series with fewer records gets fewer, wider bins (a p99 or a ratio
of three records is noise)."""


@dataclass
class Curve:
    edges: np.ndarray
    """Bin edges, epoch seconds."""
    values: np.ndarray
    """One per bin; NaN where a bin had no records."""

    def times(self) -> List[datetime]:
        return bin_times(self.edges)


@dataclass
class ModelSeries:
    """One model's log aggregates over time."""
    model: str
    records: int = 0
    p50_ms: Optional[Curve] = None
    p99_ms: Optional[Curve] = None
    rate: Optional[Curve] = None
    """Sampled records per second."""
    fallback_ratio: Optional[Curve] = None
    agreement: Dict[str, Curve] = field(default_factory=dict)
    """kind ("canary_pair", "shadow_pair") -> share of pairs that agreed."""
    accuracy: Dict[str, Curve] = field(default_factory=dict)
    """arm ("stable", "canary", ...) -> accuracy on labelled records."""
    totals: Dict[str, float] = field(default_factory=dict)
    """Over the whole range: p50_ms, p99_ms, fallback_ratio, agreement:<kind>, accuracy:<arm>, labelled:<arm>."""


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False) / 1e6


def coarsen(edges: np.ndarray, records: int) -> np.ndarray:
    """Every k-th of ``edges`` (the last kept), k such that bins hold about MIN_PER_BIN records on average."""
    bins = len(edges) - 1
    want = max(1, min(bins, records // MIN_PER_BIN))
    step = -(-bins // want)
    out = edges[::step]
    return out if out[-1] == edges[-1] else np.append(out, edges[-1])


def _curve(t: np.ndarray, values: np.ndarray, edges: np.ndarray, fn) -> Curve:
    edges = coarsen(edges, len(t))
    idx = np.searchsorted(edges, t, side="right") - 1
    out = np.full(len(edges) - 1, np.nan)
    for b in np.unique(idx[(idx >= 0) & (idx < len(edges) - 1)]):
        out[b] = fn(values[idx == b])
    return Curve(edges, out)


def aggregate(table: pa.Table, edges: np.ndarray) -> Dict[str, ModelSeries]:
    """Per-model series over bins ``edges`` (epoch seconds, increasing), coarsened per series."""
    out: Dict[str, ModelSeries] = {}
    for model in sorted(set(table.column("model").to_pylist())):
        rows = table.filter(pc.equal(table.column("model"), model))
        s = out[model] = ModelSeries(model, records=rows.num_rows)
        _samples(s, rows.filter(pc.equal(rows.column("kind"), "sample")), edges)
        for kind in ("canary_pair", "shadow_pair"):
            pairs = rows.filter(pc.and_(pc.equal(rows.column("kind"), kind), pc.is_valid(rows.column("agree"))))
            if pairs.num_rows:
                agree = pairs.column("agree").to_numpy(zero_copy_only=False).astype(float)
                s.agreement[kind] = _curve(_seconds(pairs.column("ts")), agree, edges, np.mean)
                s.totals[f"agreement:{kind}"] = float(agree.mean())
                s.totals[f"pairs:{kind}"] = float(len(agree))
        labelled = rows.filter(pc.and_(pc.is_valid(rows.column("label")), pc.greater_equal(rows.column("predicted"), 0)))
        for arm in sorted(set(labelled.column("arm").to_pylist()) - {""}):
            mine = labelled.filter(pc.equal(labelled.column("arm"), arm))
            right = pc.equal(mine.column("predicted"), mine.column("label")).to_numpy(zero_copy_only=False).astype(float)
            s.accuracy[arm] = _curve(_seconds(mine.column("ts")), right, edges, np.mean)
            s.totals[f"accuracy:{arm}"] = float(right.mean())
            s.totals[f"labelled:{arm}"] = float(len(right))
    return out


def _samples(s: ModelSeries, samples: pa.Table, edges: np.ndarray) -> None:
    if not samples.num_rows:
        return
    t = _seconds(samples.column("ts"))
    latency = samples.column("latency_ms").to_numpy(zero_copy_only=False).astype(float)
    fell_back = pc.is_valid(samples.column("fallback_reason")).to_numpy(zero_copy_only=False).astype(float)
    s.p50_ms = _curve(t, latency, edges, lambda v: np.percentile(v, 50))
    s.p99_ms = _curve(t, latency, edges, lambda v: np.percentile(v, 99))
    counts, _ = np.histogram(t, bins=s.p50_ms.edges)
    s.rate = Curve(s.p50_ms.edges, counts / np.diff(s.p50_ms.edges))
    s.fallback_ratio = _curve(t, fell_back, edges, np.mean)
    s.totals.update(samples=float(len(latency)), p50_ms=float(np.percentile(latency, 50)),
                    p99_ms=float(np.percentile(latency, 99)), fallback_ratio=float(fell_back.mean()))


def bin_edges(start: datetime, end: datetime, bins: int = 60) -> np.ndarray:
    """``bins`` equal bins over [start, end) as epoch seconds."""
    return np.linspace(start.timestamp(), end.timestamp(), bins + 1)


def bin_times(edges: np.ndarray) -> List[datetime]:
    """Bin centres as UTC datetimes (for the plots' x axes)."""
    return [datetime.fromtimestamp(c, timezone.utc) for c in (edges[:-1] + edges[1:]) / 2]
