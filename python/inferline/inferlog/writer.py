"""The inference log of one server process: a bounded buffer in, Parquet files out, off the hot path.

The request path hands over references and returns (``sample``, ``pair``): a tuple appended to a
list under a lock that nothing holds for longer than a swap. When the buffer holds ``capacity``
records or ``max_bytes`` of tensors, the record is dropped and counted; a request never waits
for the log. One thread (``inferline-log``) does the rest on a timer: every ``flush_interval_s``
it swaps the buffer out, turns the records into rows (schema.py) and writes one file per
(date, model), and runs the periodic jobs it was given (hardware samples, retention sweeps).

A write that fails (a read-only or vanished directory, a full disk, an unreachable store) loses
that file's rows: they are counted (``records_failed``, ``write_failures``) and reported in the
server log, the first time at once and then at most once per ``report_interval_s``. Serving
goes on unaffected, and the next flush tries again.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from .schema import hardware_table, inference_row, inference_table, utc_now
from .store import LogStore

log = logging.getLogger("inferline.inferlog")

_SAMPLE, _PAIR = 0, 1
# pair arm (the recorder's: which arm was routed) -> (kind, arm of the returned answer, arm of the copy)
_PAIR_ARMS = {"canary": ("canary_pair", "canary", "stable"), "shadow": ("shadow_pair", "stable", "shadow")}


class Job:
    """A periodic job of the log's thread: ``fn()`` every ``interval_s`` seconds, the first time
    after ``first_s`` (default: one interval)."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], None], first_s: Optional[float] = None):
        self.name, self.interval_s, self.fn = name, float(interval_s), fn
        self.due = time.monotonic() + (self.interval_s if first_s is None else float(first_s))


class InferenceLog:
    """See the module docstring. `arm_of(model, version) -> str` names a sample's arm ("" without
    a rollout); `worker` goes into file names."""

    def __init__(self, store: LogStore, *, worker: str = "0", capacity: int = 10_000,
                 max_bytes: int = 64 << 20, flush_interval_s: float = 60.0, report_interval_s: float = 60.0,
                 arm_of: Optional[Callable[[str, int], str]] = None):
        self.store = store
        self.worker = worker
        self.capacity = int(capacity)
        self.max_bytes = int(max_bytes)
        self.flush_interval_s = float(flush_interval_s)
        self.report_interval_s = float(report_interval_s)
        self._arm_of = arm_of or (lambda model, version: "")
        self._lock = threading.Lock()       # the buffer and the counters; held for a swap at most
        self._records: list = []
        self._bytes = 0
        self._hardware: list = []
        self.counts = collections.Counter()
        """records_written, records_dropped, records_failed, files_written, write_failures,
        hardware_written, partitions_deleted, sweep_failures."""
        self._write_lock = threading.Lock()  # one flush at a time (the thread's, or a caller's)
        self._jobs: List[Job] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_report = 0.0
        self._unreported = 0

    # ---- the request path ----------------------------------------------------------
    def sample(self, model: str, request_id: str, inputs: dict, answer, t0: float) -> None:
        """Keeps a sampled request for `model`: its inputs and ``Answer``; `t0`:
        ``time.perf_counter()`` when the server began it. Never blocks beyond a list append;
        drops when the buffer is full."""
        latency_ms = (time.perf_counter() - t0) * 1000.0
        x = next(iter(inputs.values()), None)
        y = next(iter(answer.outputs.values()), None)
        self._put((_SAMPLE, time.time(), request_id, model, answer.model, answer.version, x, y, latency_ms,
                   answer.fallback_reason), 1, _nbytes(x) + _nbytes(y))

    def pair(self, model: str, arm: str, request_id: Optional[str], inputs: dict, returned: dict,
             returned_version: int, returned_latency_ms: float, other: dict, other_version: int,
             other_latency_ms: float, agree: bool) -> None:
        """Keeps a compared pair (the rollout recorder's ``on_pair``): `arm` "canary" (a canary
        answer and its copy on stable) or "shadow" (a stable answer and its copy on the shadow).
        Two rows, one per answer, with the same request id."""
        x = next(iter(inputs.values()), None)
        y = next(iter(returned.values()), None)
        z = next(iter(other.values()), None)
        self._put((_PAIR, time.time(), request_id, model, arm, x, y, returned_version, returned_latency_ms,
                   z, other_version, other_latency_ms, bool(agree)), 2, _nbytes(x) + _nbytes(y) + _nbytes(z))

    def _put(self, record: tuple, rows: int, nbytes: int) -> None:
        with self._lock:
            if len(self._records) >= self.capacity or self._bytes + nbytes > self.max_bytes:
                self.counts["records_dropped"] += rows
                return
            self._records.append(record)
            self._bytes += nbytes

    def add_hardware(self, row: dict) -> None:
        """A hardware sample (schema.HARDWARE), written with the next flush."""
        with self._lock:
            self._hardware.append(row)

    # ---- the log's thread ------------------------------------------------------------
    def start(self, jobs: Tuple[Job, ...] = ()) -> "InferenceLog":
        """Starts the thread: flushes every flush_interval_s, and `jobs` on their intervals."""
        self._jobs = [Job("flush", self.flush_interval_s, self.flush), *jobs]
        self._thread = threading.Thread(target=self._run, name="inferline-log", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            wait = max(0.0, min(j.due for j in self._jobs) - time.monotonic())
            if self._stop.wait(wait):
                return
            now = time.monotonic()
            for job in self._jobs:
                if now >= job.due:
                    try:
                        job.fn()
                    except Exception:  # a job's bug must not end the thread
                        log.exception("inference log: %s failed", job.name)
                    job.due = time.monotonic() + job.interval_s

    def close(self) -> None:
        """Stops the thread and writes what is buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        self.flush()

    # ---- writing ---------------------------------------------------------------------
    def flush(self) -> None:
        """Writes every buffered record now: one file per (date, model), and one of hardware samples."""
        with self._write_lock:
            with self._lock:
                records, self._records, self._bytes = self._records, [], 0
                hardware, self._hardware = self._hardware, []
            groups: Dict[tuple, list] = {}
            for record in records:
                for row in self._rows(record):
                    groups.setdefault((row["ts"].date(), row["model"]), []).append(row)
            for (day, model), rows in sorted(groups.items()):
                self._write(lambda: self.store.write(inference_table(rows), "inference", day, self.worker, model),
                            len(rows), "records_written")
            by_day: Dict[object, list] = {}
            for row in hardware:
                by_day.setdefault(row["ts"].date(), []).append(row)
            for day, rows in sorted(by_day.items()):
                self._write(lambda: self.store.write(hardware_table(rows), "hardware", day, self.worker),
                            len(rows), "hardware_written")

    def _rows(self, record: tuple) -> list:
        if record[0] == _SAMPLE:
            _, ts, rid, model, by, version, x, y, latency_ms, reason = record
            mine = version if by == model else 0  # answered by another model's fallback: 0
            return [inference_row(ts, rid or "", model, mine, self._arm_of(model, mine), "sample",
                                  _named(x), _named(y), latency_ms, reason, f"{by}:{version}")]
        _, ts, rid, model, arm, x, y, v1, ms1, z, v2, ms2, agree = record
        kind, arm1, arm2 = _PAIR_ARMS.get(arm, (f"{arm}_pair", arm, ""))
        rid = rid or f"pair-{uuid.uuid4().hex}"
        inputs = _named(x)
        return [inference_row(ts, rid, model, v1, arm1, kind, inputs, _named(y), ms1, None, f"{model}:{v1}", agree),
                inference_row(ts, rid, model, v2, arm2, kind, inputs, _named(z), ms2, None, f"{model}:{v2}", agree)]

    def _write(self, write: Callable[[], object], rows: int, counter: str) -> None:
        try:
            write()
        except Exception as e:  # OSError (read-only, vanished, ENOSPC), or the store's own errors
            with self._lock:
                self.counts["write_failures"] += 1
                self.counts["records_failed"] += rows
            self._report(e, rows)
            return
        with self._lock:
            self.counts[counter] += rows
            self.counts["files_written"] += 1

    def _report(self, error: Exception, rows: int) -> None:
        """The server log hears of failed writes at once, then at most once per report_interval_s."""
        self._unreported += rows
        now = time.monotonic()
        if self._last_report and now - self._last_report < self.report_interval_s:
            return
        log.warning("inference log: writing under %s failed (%s: %s); %d record(s) lost since the last report, "
                    "%d write failure(s) in all; serving is unaffected", self.store.url, type(error).__name__,
                    error, self._unreported, self.counts["write_failures"])
        self._last_report, self._unreported = now, 0

    def stats(self) -> dict:
        """This log's counters (see ``counts``), and ``buffered``: records waiting to be written."""
        with self._lock:
            out = {k: self.counts.get(k, 0) for k in ("records_written", "records_dropped", "records_failed",
                                                       "files_written", "write_failures", "hardware_written",
                                                       "partitions_deleted", "sweep_failures")}
            out["buffered"] = len(self._records)
        return out

    @property
    def today(self):
        return utc_now().date()


def _named(a) -> dict:
    return {} if a is None else {"": a}


def _nbytes(a) -> int:
    return int(getattr(a, "nbytes", 0))
