"""Inference logs: sampled requests, rollout comparison pairs and hardware samples, as Parquet.

    ROOT/inference/date=YYYY-MM-DD/model=NAME/part-<worker>-<uuid>.parquet   (schema.INFERENCE)
    ROOT/hardware/date=YYYY-MM-DD/part-<worker>-<uuid>.parquet               (schema.HARDWARE)

ROOT is a local directory or any fsspec URL (``inferline serve --inference-log``; by default
``~/.inferline/logs``). Each server process keeps ``logging.sample_rate`` of each version's
requests (its model config; 1% by default) and every canary or shadow comparison pair; the
request path only appends a reference to a bounded buffer (writer.py). The log's thread writes the
files, samples the process's CPU, memory and GPUs every ``--hardware-log-interval`` seconds
(hardware.py) and, on worker 0, removes partitions past retention 30 s after start and then
hourly (retention.py; ``inferline logs sweep`` does it by hand).

``stats()``: this process's counters (records written, dropped, failed; write failures...), for a
metrics collector.
"""

from __future__ import annotations

import os
import weakref
from typing import Optional

from .hardware import HardwareSampler
from .retention import Retention, expired, sweep
from .schema import HARDWARE, INFERENCE
from .store import LogStore
from .writer import InferenceLog, Job

__all__ = ["HARDWARE", "INFERENCE", "HardwareSampler", "InferenceLog", "LogStore", "Retention", "default_root",
           "expired", "for_server", "stats", "sweep"]

SWEEP_INTERVAL_S = 3600.0
"""How often worker 0 removes partitions past retention."""
FIRST_SWEEP_S = 30.0
"""The first sweep, this long after the server starts (a server restarted often still sweeps)."""
OFF = ("", "off", "none")

_live: "weakref.WeakSet[InferenceLog]" = weakref.WeakSet()


def default_root() -> str:
    """Where a server's inference log goes when --inference-log is not given."""
    return os.path.join(os.path.expanduser("~"), ".inferline", "logs")


def for_server(settings, worker: int, recorder=None) -> Optional[InferenceLog]:
    """The started inference log of one server worker (``settings``: ServerSettings), or None when
    --inference-log is off. Pairs come from ``recorder`` (rollout.Recorder): its ``on_pair``."""
    url = settings.inference_log if settings.inference_log is not None else default_root()
    if url.strip().lower() in OFF:
        return None
    retention = Retention(settings.inference_log_retention_days, settings.hardware_log_retention_days)
    store = LogStore(url)
    ilog = InferenceLog(store, worker=f"{worker}-{os.getpid()}", flush_interval_s=settings.inference_log_flush_s,
                        arm_of=_arm_lookup(recorder))
    jobs = []
    if settings.hardware_log_interval_s > 0:
        sampler = HardwareSampler()
        jobs.append(Job("hardware sample", settings.hardware_log_interval_s, lambda: ilog.add_hardware(sampler())))
    if worker == 0:
        jobs.append(Job("retention sweep", SWEEP_INTERVAL_S, lambda: _sweep(ilog, retention), first_s=FIRST_SWEEP_S))
    if recorder is not None:
        recorder.on_pair = ilog.pair
    _live.add(ilog)
    return ilog.start(tuple(jobs))


def _sweep(ilog: InferenceLog, retention: Retention) -> None:
    try:
        removed = sweep(ilog.store, retention)
    except Exception as e:
        ilog.counts["sweep_failures"] += 1
        ilog._report(e, 0)
        return
    ilog.counts["partitions_deleted"] += len(removed)


def _arm_lookup(recorder):
    """arm_of(model, version) from the recorder's watches: "canary", "stable" or ""."""
    def arm_of(model: str, version: int) -> str:
        w = recorder.watch(model) if recorder is not None else None
        if w is None:
            return ""
        if version == w.watch.canary:
            return "canary"
        return "stable" if version == w.watch.stable else ""
    return arm_of


def stats() -> dict:
    """The counters of this process's inference logs, summed: records_written, records_dropped
    (buffer full), records_failed (their file could not be written), files_written,
    write_failures, hardware_written, partitions_deleted, sweep_failures, buffered."""
    out: dict = {}
    for ilog in list(_live):
        for k, v in ilog.stats().items():
            out[k] = out.get(k, 0) + v
    return out
