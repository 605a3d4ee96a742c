"""Prometheus metrics of one worker, read from the core at scrape time.

Nothing here runs per request: every series is built when ``/metrics`` is scraped, from the
core's counters and histograms (``Model.stats()``: lock-free atomics the core keeps anyway), the
core router's counters (``Engine.routing_stats``), the admission counters, the rollout recorder's
per-arm counts, prometheus-client's process collector and, when nvidia-ml-py finds a GPU, NVML.

Series (labels ``model``, ``version``; names per Prometheus conventions):

    inferline_request_duration_seconds   histogram  core: enqueue -> answer, requests answered OK
    inferline_queue_duration_seconds     histogram  core: enqueue -> batch start, requests answered OK
    inferline_compute_duration_seconds   histogram  core: one batch's backend run (per batch), preprocessing
                                                    included (it runs fused into the batch's gather)
    inferline_decode_duration_seconds    histogram  frontend: wire message -> tensors, requests answered OK
    inferline_encode_duration_seconds    histogram  frontend: outputs -> wire message, requests answered OK
    inferline_requests_total             counter    requests the core accepted into the queue
    inferline_inferences_total           counter    rows of those requests
    inferline_errors_total               counter    + code: DEADLINE_EXCEEDED, CANCELLED,
                                                      RESOURCE_EXHAUSTED (queue full or shed), INTERNAL
    inferline_batch_size                 histogram  rows per executed batch (bounds 1, 2, 4 ... 4096)
    inferline_batch_slots_total          counter    batches x max batch size: fill = rows / slots
    inferline_batch_fill_ratio           gauge      rows / slots since the version was loaded
    inferline_requests_in_flight         gauge      accepted and not yet answered (from the counters)
    inferline_queue_rows                 gauge      core: rows admitted and not answered (queued or running)
    inferline_request_errors_total       counter    protocol, code, model (no version): every inference
                                                      request a frontend answered with an error, as the
                                                      client saw it (frontend_stats.py)
    inferline_inference_log_*_total      counter    the worker's inference log (absent when it is off):
                                                      records_written, records_dropped, records_failed, ...
    inferline_inference_log_buffered_records  gauge records waiting to be written
    inferline_native_tap_dropped_total   counter    the native gRPC frontend's copies of answered requests
                                                      (inference log samples, rollout recording) dropped
                                                      before Python read them (absent with the Python one)
    inferline_model_load_time_seconds    gauge      load + warm-up, as the registry recorded it
    inferline_model_gpu_memory_bytes     gauge      what a version takes on its GPU (absent on the CPU)
    inferline_routed_requests_total      counter    model only: requests through the core router
    inferline_routed_answers_total       counter    model, outcome: ok / error / fallback
    inferline_fallbacks_total            counter    model, reason: error, deadline, overload, ...
    inferline_cache_hits_total, _misses_total       prediction cache, per version that has one
    inferline_admission_refused_total    counter    reason, code: refused before decoding (overload,
                                                      deadline; the native frontend's lobby: lobby_expired,
                                                      lobby_shed, lobby_timed_out)
    inferline_admission_lobby_requests   gauge      state: waiting (all) / held (of those, the hopeless,
                                                      answered just before their deadline): the native
                                                      gRPC frontend's lobby now
    inferline_admission_lobby_admitted_total counter  requests admitted from the lobby
    inferline_canary_weight_percent      gauge      model, version (the canary): its share of traffic
    inferline_canary_requests_total, _errors_total  model, arm, version: this rollout window's counts
    inferline_canary_pairs_total, _agreements_total model, arm (canary: mirrored to stable; shadow)
    inferline_canary_accuracy_delta      gauge      canary accuracy - stable accuracy (labelled data)
    inferline_gpu_utilization_ratio, inferline_gpu_memory_used_bytes   gpu: NVML, only with a GPU
    process_*                                       prometheus-client's process collector

Latency buckets sit on the core's own bucket bounds (four per power of two, 1.024 ms to 327 ms,
and sparser beyond), so the re-bucketing is exact and p99 near the 200 ms SLO is resolved to
~20%; all workers and replicas share the bounds, so the histograms add up across them.

Stages: decode and encode are timed by the frontends (one pybind call per stage and request into
a ``_core.StageHistogram`` on the same bounds; frontend_stats.py); queue, compute and end to end
by the core. Preprocessing has no histogram of its own: the core runs it fused into the batch's
gather, inside compute.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional

from prometheus_client import ProcessCollector

from ..errors import InferlineError
from .metrics_families import Family, from_prometheus, rebucket

log = logging.getLogger("inferline.metrics")


def _latency_bounds_us() -> tuple:
    """Bounds of the core's buckets (each a power of two times 1, 1.25, 1.5 or 1.75 in µs)."""
    bounds = [64, 128, 256, 512]
    for exp in range(10, 19):
        bounds += [(4 + j) << (exp - 2) for j in range(4)]
    bounds = [b for b in bounds if b <= 330_000]
    return tuple(bounds + [1 << 19, 1 << 20, 1 << 21, 1 << 22, 1 << 23, 1 << 24])


LATENCY_BOUNDS_US = _latency_bounds_us()
LATENCY_BOUNDS_S = tuple(b / 1e6 for b in LATENCY_BOUNDS_US)
BATCH_BOUNDS = tuple(float(1 << i) for i in range(13))
CORE_ERROR_CODES = (("DEADLINE_EXCEEDED", "deadline_missed"), ("CANCELLED", "cancelled"),
                    ("RESOURCE_EXHAUSTED", "shed"), ("RESOURCE_EXHAUSTED", "rejected"), ("INTERNAL", "errors"))
ACCURACY_REFRESH_S = 15.0
MV = ("model", "version")


def _families() -> dict:
    f = {}

    def add(name, kind, help, labels=MV, **kw):
        f[name] = Family(name, kind, help, tuple(labels), **kw)

    add("inferline_request_duration_seconds", "histogram", "Core time from enqueue to answer of requests "
        "answered OK (excludes the frontend's decode and encode).", bounds=LATENCY_BOUNDS_S)
    add("inferline_queue_duration_seconds", "histogram", "Time requests answered OK waited in the core's queue.",
        bounds=LATENCY_BOUNDS_S)
    add("inferline_compute_duration_seconds", "histogram", "Backend time of each executed batch (preprocessing "
        "included: it runs fused into the batch's gather).", bounds=LATENCY_BOUNDS_S)
    add("inferline_decode_duration_seconds", "histogram", "Frontend time turning a request's wire message into "
        "tensors (gRPC: parse included; REST: after the body was read), requests answered OK.",
        bounds=LATENCY_BOUNDS_S)
    add("inferline_encode_duration_seconds", "histogram", "Frontend time turning a request's outputs into its "
        "wire message, requests answered OK.", bounds=LATENCY_BOUNDS_S)
    add("inferline_requests", "counter", "Requests the core accepted into a version's queue.")
    add("inferline_inferences", "counter", "Rows (inferences) of the accepted requests.")
    add("inferline_errors", "counter", "Requests the core answered with an error (or refused: queue full, "
        "deadline passed), by gRPC code.", labels=MV + ("code",))
    add("inferline_batch_size", "histogram", "Rows per executed batch.", bounds=BATCH_BOUNDS)
    add("inferline_batch_slots", "counter", "Executed batches times the version's max batch size "
        "(batch fill = rate of inferline_batch_size_sum / rate of this).")
    add("inferline_batch_fill_ratio", "gauge", "Rows / (batches x max batch size) since the version was loaded.")
    add("inferline_requests_in_flight", "gauge", "Requests accepted by the core and not answered yet.",
        combine="sum")
    add("inferline_queue_rows", "gauge", "Rows admitted by the core and not answered yet (queued or running).",
        combine="sum")
    add("inferline_request_errors", "counter", "Inference requests the frontends answered with an error, by the "
        "gRPC code the client saw (REST: the code of the error behind the HTTP status), whatever raised it "
        "(decoding, routing, admission, the core); model \"\" when no name was read, \"_unknown\" for names "
        "not loaded.", labels=("protocol", "code", "model"))
    add("inferline_model_load_time_seconds", "gauge", "Seconds the version took to load and warm up "
        "(the registry's record).", combine="max")
    add("inferline_model_gpu_memory_bytes", "gauge", "Bytes the version takes on its GPU.", combine="sum")
    add("inferline_routed_requests", "counter", "Requests routed by the model's policy in the core.",
        labels=("model",))
    add("inferline_routed_answers", "counter", "Routed requests by outcome (fallback: answered by a fallback).",
        labels=("model", "outcome"))
    add("inferline_fallbacks", "counter", "Requests answered along a fallback chain, by reason.",
        labels=("model", "reason"))
    add("inferline_cache_hits", "counter", "Prediction cache hits.")
    add("inferline_cache_misses", "counter", "Prediction cache misses.")
    add("inferline_admission_refused", "counter", "Inference requests refused before decoding, by reason.",
        labels=("reason", "code"))
    add("inferline_admission_lobby_requests", "gauge", "Inference requests waiting in the native gRPC "
        "frontend's admission lobby (held: the hopeless among them, answered just before their deadline).",
        labels=("state",))
    add("inferline_admission_lobby_admitted", "counter", "Inference requests admitted from the lobby.", labels=())
    add("inferline_gateway_replicas", "gauge", "Gateway (serve --ray): replicas of each pool it knows, by state "
        "(down: set aside after a failed forward).", labels=("pool", "state"), combine="max")
    add("inferline_gateway_forwards", "counter", "Gateway: batches forwarded to a pool's replicas (a retried "
        "batch counts twice).", labels=("pool",))
    add("inferline_gateway_retries", "counter", "Gateway: batches sent again to another replica after the first "
        "failed (UNAVAILABLE, RESOURCE_EXHAUSTED).", labels=("pool",))
    add("inferline_gateway_forward_failures", "counter", "Gateway: batches no replica of the pool answered (the "
        "fallback chain took them).", labels=("pool",))
    add("inferline_gateway_forwards_in_flight", "gauge", "Gateway: forwards awaiting a replica's answer.",
        labels=("pool",), combine="sum")
    add("inferline_canary_weight_percent", "gauge", "The canary version's share of the model's traffic (%).",
        combine="max")
    for what in ("requests", "errors"):
        add(f"inferline_canary_{what}", "counter", f"{what.capitalize()} of each arm in the rollout's current "
            f"window (restart at each step).", labels=("model", "arm", "version"))
    add("inferline_canary_pairs", "counter", "Mirrored requests compared (arm canary: canary vs stable; "
        "arm shadow: shadow vs live), current window.", labels=("model", "arm", "version"))
    add("inferline_canary_agreements", "counter", "Compared pairs whose answers agreed, current window.",
        labels=("model", "arm", "version"))
    add("inferline_canary_accuracy_delta", "gauge", "Canary accuracy minus stable accuracy on labelled "
        "requests of the current window (absent until both have labels).", combine="max")
    return f


class CoreMetrics:
    """Builds one worker's families from its data plane at each scrape (thread-safe)."""

    def __init__(self, dataplane):
        self._dp = dataplane
        self._process = ProcessCollector(registry=None)
        self._gpu = _Nvml.open()
        self._accuracy = _AccuracyDelta(dataplane.models)

    def families(self) -> List[Family]:
        f = _families()
        engine = self._dp.models.engine
        names = set()
        for name, version in engine.models():
            try:
                stats = engine.stats(name, version)
            except InferlineError:  # unloaded between the listing and the read
                continue
            names.add(name)
            self._version(f, (name, version), stats)
        for name in sorted(names):
            self._routing(f, engine, name)
        self._frontend(f, self._dp.frontend_stats)
        for reason, n in self._dp.frontend_stats.admission_refused(self._dp.admission.stats()["refused"]).items():
            code = "DEADLINE_EXCEEDED" if reason in ("deadline", "lobby_expired") else "UNAVAILABLE"
            f["inferline_admission_refused"].add((reason, code), n)
        lobby = self._dp.frontend_stats.lobby()
        f["inferline_admission_lobby_requests"].add(("waiting",), lobby["parked"])
        f["inferline_admission_lobby_requests"].add(("held",), lobby["held"])
        f["inferline_admission_lobby_admitted"].add((), lobby["admitted"])
        self._canary(f)
        self._gateway(f)
        out = [fam for fam in f.values() if fam.series or fam.kind != "gauge"]
        if self._dp.inference_log is not None:
            out += _inference_log(self._dp.inference_log.stats())
        out += from_prometheus(self._process.collect())
        if self._gpu is not None:
            out += self._gpu.families()
        return out

    def _gateway(self, f: dict) -> None:
        pools = getattr(self._dp.models, "pools", None)
        if pools is None:
            return
        for key, pool in sorted(pools.pools().items()):
            st = pool.stats()
            f["inferline_gateway_replicas"].add((key, "up"), st["replicas_up"])
            f["inferline_gateway_replicas"].add((key, "down"), st["replicas_down"])
            f["inferline_gateway_forwards"].add((key,), st["forwards"])
            f["inferline_gateway_retries"].add((key,), st["retries"])
            f["inferline_gateway_forward_failures"].add((key,), st["failures"])
            f["inferline_gateway_forwards_in_flight"].add((key,), st["inflight"])

    def _version(self, f: dict, key: tuple, s: dict) -> None:
        for fam, hist in (("request", "end_to_end_us"), ("queue", "queue_us"), ("compute", "compute_us")):
            h = s[hist]
            f[f"inferline_{fam}_duration_seconds"].add_histogram(
                key, rebucket(h["buckets"], LATENCY_BOUNDS_US), h["sum"] / 1e6)
        f["inferline_requests"].add(key, s["requests"])
        f["inferline_inferences"].add(key, s["rows"])
        codes: dict = {}
        for code, field in CORE_ERROR_CODES:
            codes[code] = codes.get(code, 0) + s[field]
        for code, n in codes.items():
            f["inferline_errors"].add(key + (code,), n)
        counts = s["batch_size_counts"]
        cumulative = [sum(counts[:int(b) + 1]) for b in BATCH_BOUNDS] + [sum(counts)]
        rows = sum(size * n for size, n in enumerate(counts))
        f["inferline_batch_size"].add_histogram(key, cumulative, rows)
        f["inferline_batch_slots"].add(key, sum(counts) * s["max_batch_size"])
        f["inferline_batch_fill_ratio"].add(key, s["fill_ratio"])
        answered = s["end_to_end_us"]["count"] + s["errors"] + s["cancelled"] + s["shed"] + s["deadline_missed"]
        f["inferline_requests_in_flight"].add(key, max(0, s["requests"] - answered))
        f["inferline_queue_rows"].add(key, s["queued_rows"])
        record = self._dp.models.record(*key)
        if record is not None and record.model_load_time_s is not None:
            f["inferline_model_load_time_seconds"].add(key, record.model_load_time_s)
        if s.get("gpu_memory_bytes"):
            f["inferline_model_gpu_memory_bytes"].add(key, s["gpu_memory_bytes"])

    @staticmethod
    def _frontend(f: dict, fs) -> None:
        for key, snapshots in fs.stage_snapshots().items():
            for stage, h in zip(("decode", "encode"), snapshots):
                f[f"inferline_{stage}_duration_seconds"].add_histogram(
                    key, rebucket(h["buckets"], LATENCY_BOUNDS_US), h["sum"] / 1e6)
        for key, n in fs.errors().items():
            f["inferline_request_errors"].add(key, n)
        dropped = fs.tap_dropped()
        if dropped is not None:  # a native gRPC frontend: its family exists only then
            fam = f["inferline_native_tap_dropped"] = Family(
                "inferline_native_tap_dropped", "counter", "Copies of answered requests (inference log samples, "
                "rollout recording) the native gRPC frontend dropped because Python had not read the ones before.")
            fam.add((), dropped)

    @staticmethod
    def _routing(f: dict, engine, name: str) -> None:
        try:
            r = engine.routing_stats(name)
        except InferlineError:  # no policy published for it (or removed meanwhile)
            return
        f["inferline_routed_requests"].add((name,), r["requests"])
        for outcome in ("ok", "error", "fallback"):
            f["inferline_routed_answers"].add((name, outcome), r["answered_by_fallback" if outcome == "fallback"
                                                                 else f"answered_{outcome}"])
        for reason, n in r["fallbacks"].items():
            f["inferline_fallbacks"].add((name, reason), n)
        for v in r["versions"]:
            if v.get("cache"):
                f["inferline_cache_hits"].add((name, v["version"]), v["cache"]["hits"])
                f["inferline_cache_misses"].add((name, v["version"]), v["cache"]["misses"])

    def _canary(self, f: dict) -> None:
        manager = self._dp.models
        rollouts = dict(getattr(manager, "_rollouts", {}))  # the manager's view, replaced whole per poll
        for name, rollout in rollouts.items():
            f["inferline_canary_weight_percent"].add((name, rollout.version), rollout.weight)
        for name, (version, delta) in self._accuracy.read(rollouts).items():
            f["inferline_canary_accuracy_delta"].add((name, version), delta)
        for name in rollouts.keys() | set(getattr(manager, "_shadows", {})):
            watched = manager.recorder.watch(name)
            if watched is None:
                continue
            arms = {c.version: ("canary" if c.version == watched.watch.canary else "stable", c)
                    for c in watched.arms.values()}
            for _share, _target, counts, arm, _cap in watched.copies.values():
                arms.setdefault(counts.version, (arm, counts))
            for version, (arm, c) in arms.items():
                key = (name, arm, version)
                f["inferline_canary_requests"].add(key, c.requests)
                f["inferline_canary_errors"].add(key, c.errors)
                if arm != "stable":
                    f["inferline_canary_pairs"].add(key, c.pairs)
                    f["inferline_canary_agreements"].add(key, c.agree)


def _inference_log(stats: dict) -> List[Family]:
    """``inferline_inference_log_<counter>_total`` for each of the log's counters, and the buffer's fill."""
    out = []
    for key, value in stats.items():
        if key == "buffered":
            fam = Family("inferline_inference_log_buffered_records", "gauge", "Inference log records waiting "
                         "to be written.", combine="sum")
        else:
            fam = Family(f"inferline_inference_log_{key}", "counter", f"Inference log: {key.replace('_', ' ')} "
                         "(inferlog.InferenceLog.stats).")
        fam.add((), value)
        out.append(fam)
    return out


class _AccuracyDelta:
    """The canary's accuracy delta, from the registry's labels: read on the manager's registry
    thread by a helper thread at most every ACCURACY_REFRESH_S, so a scrape never waits for the
    registry (it reports the last value read)."""

    def __init__(self, manager):
        self._manager = manager
        self._values: dict = {}
        self._at = 0.0
        self._busy = False
        self._lock = threading.Lock()

    def read(self, rollouts: dict) -> dict:
        with self._lock:
            stale = rollouts and not self._busy and time.monotonic() - self._at > ACCURACY_REFRESH_S
            if stale:
                self._busy = True
            values = {n: v for n, v in self._values.items() if n in rollouts}
        if stale:
            threading.Thread(target=self._refresh, args=(rollouts,), daemon=True,
                             name="inferline-metrics-accuracy").start()
        return values

    def _refresh(self, rollouts: dict) -> None:
        from ..rollout.controller import step_evidence
        values = {}
        try:
            for name, rollout in rollouts.items():
                ev = self._manager.run_on_registry(lambda registry, r=rollout: step_evidence(registry, r))
                if ev.get("canary_accuracy_delta") is not None:
                    values[name] = (rollout.version, float(ev["canary_accuracy_delta"]))
        except Exception:  # the registry is away: keep the last values
            log.debug("canary accuracy for metrics not read", exc_info=True)
            values = None
        with self._lock:
            if values is not None:
                self._values = values
            self._at, self._busy = time.monotonic(), False


class _Nvml:
    """GPU utilization and memory through NVML; ``open()`` is None without nvidia-ml-py or a GPU
    (the series are then absent, not zero)."""

    def __init__(self, nvml, handles):
        self._nvml, self._handles = nvml, handles

    @classmethod
    def open(cls) -> Optional["_Nvml"]:
        try:
            import pynvml as nvml  # nvidia-ml-py
            nvml.nvmlInit()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except Exception:  # not installed, no driver, no device
            return None
        return cls(nvml, handles) if handles else None

    def families(self) -> List[Family]:
        util = Family("inferline_gpu_utilization_ratio", "gauge", "Share of the last sample period the GPU was "
                      "busy (NVML).", ("gpu",), combine="max")
        mem = Family("inferline_gpu_memory_used_bytes", "gauge", "GPU memory in use by all processes (NVML).",
                     ("gpu",), combine="max")
        for i, h in enumerate(self._handles):
            try:
                util.add((i,), self._nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
                mem.add((i,), self._nvml.nvmlDeviceGetMemoryInfo(h).used)
            except Exception:
                continue
        return [util, mem]
