"""Inference log files written the way the issue documents them (not by inferline.inferlog's
writer): ROOT/inference/date=YYYY-MM-DD/model=NAME/part-*.parquet with the full schema, seeded
synthetic records over several dates.

    truth = write_logs(root, end, days=3)   # the records as numpy arrays, to compare against
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("ts", pa.timestamp("us", "UTC")), ("request_id", pa.string()), ("model", pa.string()), ("version", pa.int64()),
    ("arm", pa.string()), ("kind", pa.string()), ("inputs", pa.list_(pa.float32())),
    ("input_shape", pa.list_(pa.int64())), ("outputs", pa.list_(pa.float32())), ("predicted", pa.int64()),
    ("confidence", pa.float32()), ("latency_ms", pa.float64()), ("fallback_reason", pa.string()),
    ("answered_by", pa.string()), ("agree", pa.bool_()), ("label", pa.int64())])


def records(rng, model: str, start: datetime, seconds: float, n: int, canary: bool) -> dict:
    """n records of one model over [start, start + seconds): samples, and with ``canary`` canary
    pairs (agree ~95%) and labelled records per arm (stable ~97% right, canary ~88%)."""
    ts = np.sort(rng.uniform(0, seconds, n))
    kind = rng.choice(["sample", "canary_pair"], n, p=[0.7, 0.3]) if canary else np.full(n, "sample")
    arm = np.where(kind == "canary_pair", "canary", rng.choice(["stable", "canary"], n, p=[0.8, 0.2]) if canary
                   else "")
    version = np.where(arm == "canary", 2, 1)
    slow = 1 + 2 * (ts > seconds / 2)  # latency triples half way: something to see in the plot
    latency = rng.lognormal(np.log(3.0), 0.35, n) * slow
    fallback = np.where(rng.random(n) < 0.04, "deadline", None)
    agree = np.where(kind == "canary_pair", rng.random(n) < 0.95, None)
    predicted = rng.integers(0, 10, n)
    labelled = rng.random(n) < 0.5
    right = rng.random(n) < np.where(arm == "canary", 0.88, 0.97)
    label = np.where(labelled, np.where(right, predicted, (predicted + 1) % 10), None)
    return {"ts": [start + timedelta(seconds=float(t)) for t in ts], "request_id": [uuid.uuid4().hex for _ in ts],
            "model": [model] * n, "version": version, "arm": arm, "kind": kind,
            "inputs": [rng.random(4, dtype=np.float32) for _ in ts], "input_shape": [[1, 4]] * n,
            "outputs": [rng.random(10, dtype=np.float32) for _ in ts], "predicted": predicted,
            "confidence": rng.random(n, dtype=np.float32), "latency_ms": latency, "fallback_reason": fallback,
            "answered_by": [f"{model}:{v}" for v in version], "agree": agree, "label": label}


def write_logs(root, end: datetime, days: int = 3, per_day: int = 400, seed: int = 0) -> dict:
    """Records of "digits-mlp" (with a canary) and "digits-logreg" for each of the ``days`` days
    before ``end``, two part files per day and model. Returns {model: pyarrow Table} of all of them."""
    rng = np.random.default_rng(seed)
    out = {}
    for model, canary in (("digits-mlp", True), ("digits-logreg", False)):
        tables = []
        for d in range(days, 0, -1):
            day_start = end - timedelta(days=d)
            for part in range(2):  # two files, half a day each
                start = day_start + timedelta(hours=12 * part)
                t = pa.Table.from_pydict(records(rng, model, start, 12 * 3600, per_day // 2, canary), schema=SCHEMA)
                for date in sorted({ts.date() for ts in t.column("ts").to_pylist()}):
                    mine = t.filter(pc.equal(pc.cast(t.column("ts"), pa.date32()), date))
                    where = os.path.join(str(root), "inference", f"date={date}", f"model={model}")
                    os.makedirs(where, exist_ok=True)
                    pq.write_table(mine, os.path.join(where, f"part-0-{uuid.uuid4().hex}.parquet"))
                tables.append(t)
        out[model] = pa.concat_tables(tables)
    return out


def fixed_end() -> datetime:
    return datetime(2025, 3, 14, 18, 30, tzinfo=timezone.utc)
