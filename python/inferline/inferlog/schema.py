"""The inference log's two tables, as others read them (``inferline report``), and rows for them.

These column names, types and meanings are a contract: readers rely on them. Add a column only
at the end, and never change one's type.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

INFERENCE = pa.schema([
    ("ts", TS),                           # when the answer was known (UTC)
    ("request_id", pa.string()),          # the client's id; one made up for a pair without one
    ("model", pa.string()),
    ("version", pa.int64()),              # the version whose outputs this row holds
    ("arm", pa.string()),                 # "stable", "canary", "shadow", or "" (no rollout)
    ("kind", pa.string()),                # "sample", "shadow_pair", "canary_pair"
    ("inputs", pa.list_(pa.float32())),   # the first input, flattened
    ("input_shape", pa.list_(pa.int64())),
    ("outputs", pa.list_(pa.float32())),  # the first output, flattened
    ("predicted", pa.int64()),            # argmax of the first output's one row; -1 if not applicable
    ("confidence", pa.float32()),         # max of that row when it looks like probabilities, else null
    ("latency_ms", pa.float64()),         # the server's time for this answer (a copy's own, for a copy)
    ("fallback_reason", pa.string()),     # null when the routed version answered
    ("answered_by", pa.string()),         # "model:version" that produced the outputs
    ("agree", pa.bool_()),                # pairs: whether the two answers agree; null for samples
    ("label", pa.int64()),                # the true label when known at write time (null: feedback comes later)
])
"""ROOT/inference/date=YYYY-MM-DD/model=NAME/part-<worker>-<uuid>.parquet"""

HARDWARE = pa.schema([
    ("ts", TS),
    ("worker", pa.int64()),               # the server process's pid
    ("cpu_percent", pa.float64()),        # the process's CPU time over the interval / wall time x 100
    ("rss_bytes", pa.int64()),
    ("gpu_util_percent", pa.float64()),   # mean over the machine's GPUs (NVML); null without one
    ("gpu_memory_bytes", pa.int64()),     # memory used on the machine's GPUs, summed; null without one
])
"""ROOT/hardware/date=YYYY-MM-DD/part-<worker>-<uuid>.parquet"""


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def inference_row(ts: float, request_id: str, model: str, version: int, arm: str, kind: str,
                  inputs: Mapping[str, Any], outputs: Mapping[str, Any], latency_ms: float,
                  fallback_reason: Optional[str], answered_by: str, agree: Optional[bool] = None,
                  label: Optional[int] = None) -> dict:
    """One row of INFERENCE from a request's inputs and answer (numpy arrays by name; the first
    of each is kept). Runs on the log's writer thread, never on a request's path."""
    x = _first(inputs)
    y = _first(outputs)
    predicted, confidence = _prediction(y)
    return {
        "ts": _dt.datetime.fromtimestamp(ts, _dt.timezone.utc), "request_id": request_id, "model": model,
        "version": int(version), "arm": arm, "kind": kind,
        "inputs": _floats(x), "input_shape": [] if x is None else [int(d) for d in x.shape],
        "outputs": _floats(y), "predicted": predicted, "confidence": confidence,
        "latency_ms": float(latency_ms), "fallback_reason": fallback_reason, "answered_by": answered_by,
        "agree": agree, "label": label,
    }


def _first(tensors: Mapping[str, Any]) -> Optional[np.ndarray]:
    for value in tensors.values():
        return np.asarray(value)
    return None


def _floats(a: Optional[np.ndarray]) -> list:
    if a is None or a.dtype.kind not in "biuf":
        return []
    return a.astype(np.float32, copy=False).reshape(-1)


def _prediction(y: Optional[np.ndarray]) -> tuple:
    """(argmax, confidence) of a one-row numeric output with 2 or more values; (-1, None) else.
    Confidence only when the row looks like probabilities: every value in [0, 1], summing to 1."""
    if y is None or y.dtype.kind not in "biuf" or y.ndim < 1 or y.shape[-1] < 2 or y.size != y.shape[-1]:
        return -1, None
    row = y.reshape(-1).astype(np.float64)
    if not np.all(np.isfinite(row)):
        return -1, None
    best = int(np.argmax(row))
    looks = bool(np.all(row >= 0.0) and np.all(row <= 1.0) and abs(row.sum() - 1.0) < 1e-3)
    return best, (float(row[best]) if looks else None)


def inference_table(rows: list) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INFERENCE)


def hardware_table(rows: list) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=HARDWARE)
