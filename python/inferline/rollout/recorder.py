"""What one process sees of a rollout: per-arm counts and latency, mirrored pairs, predictions.

The ``Service`` asks ``watch(model)`` once per request (one dict read); only a model with an active
canary or shadow has a ``Watch``, and only its requests pay for the recording (a clock read, a
histogram bucket, a counter under an uncontended lock). After the answer is known:

- ``answered`` / ``failed`` count the request on the arm it was routed to (the core says which:
  ``primary_version``); an answer a fallback gave counts as a failure of that arm.
- A canary-routed request is mirrored to the stable version (``Watch.mirror_share`` percent), a
  stable-routed one to the shadow version (``Watch.shadow_share``): the copy runs on the engine
  beside the real traffic, after the real answer is out, and is compared with it (``compare``);
  on the caller's event loop when it has one (no thread hop), else on the engine's completion thread.
  At most ``max_in_flight`` copies run at once; beyond that they are dropped and counted. At most
  ``Watch.mirror_max_per_s`` / ``shadow_max_per_s`` copies start per second; beyond that they are
  sampled (not counted). A copy never delays or fails a real answer.
- Counts may also come from elsewhere: the native gRPC frontend counts its requests per arm in
  C++ and hands the recorder only the answers to copy (``count_sources``, ``answered(counted=True)``).
- Requests with an id leave their predicted label (``predicted_label``) for label feedback.

``flush(registry, worker)`` publishes this process's cumulative counts of each window to the
registry (one row per window, worker and arm: the controller sums the workers), and the buffered
predictions. It runs on the service's registry thread, never on a request's path.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import InferlineError, ResourceExhausted

LATENCY_BOUNDS_MS: Tuple[float, ...] = tuple(round(0.05 * 1.2 ** i, 4) for i in range(80))
"""Upper bounds of the latency histogram's buckets (ms), 20% apart, 0.05 ms to ~90 s; one more
bucket holds the rest. Shared by every worker so that their histograms add up."""

MAX_PREDICTIONS = 10_000
"""Predictions a process buffers between flushes; beyond that they are dropped and counted."""


@dataclass(frozen=True)
class Watch:
    """What to record for one model's requests (published whole by the service's sync)."""

    name: str
    """Model name."""
    stable: int
    """The live version (the stable arm)."""
    canary: Optional[int] = None
    """The canary version, when a rollout is active."""
    window: Optional[str] = None
    """The active rollout's current window (``Rollout.window``)."""
    mirror_share: float = 100.0
    """Percent of canary-routed requests also run on the stable version."""
    shadow: Optional[int] = None
    """The shadow version, when one runs."""
    shadow_share: float = 0.0
    """Percent of stable-routed requests copied to the shadow version."""
    shadow_window: Optional[str] = None
    """The shadow's window (``Shadow.window``)."""
    record_predictions: bool = False
    """Keep (request id, version, predicted label) for label feedback."""
    mirror_max_per_s: float = 0.0
    """Mirrored copies started per second at most (``CanaryConfig.max_copies_per_s``; 0: no cap)."""
    shadow_max_per_s: float = 0.0
    """Shadow copies started per second at most (0: no cap)."""


class ArmCounts:
    """Counts of one arm in one window (this process's share)."""

    __slots__ = ("version", "requests", "errors", "fallbacks", "latency", "pairs", "agree", "max_abs_diff",
                 "copy_errors", "dropped")

    def __init__(self, version: int):
        self.version = version
        self.requests = 0
        self.errors = 0          # failed, or answered by a fallback (fallbacks counts those)
        self.fallbacks = 0
        self.latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.pairs = 0           # mirrored pairs compared
        self.agree = 0           # of those, how many agreed
        self.max_abs_diff = 0.0
        self.copy_errors = 0     # copies that failed on the other version
        self.dropped = 0         # copies not run: too many in flight

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class Recorder:
    """One process's recording of rollouts (see the module docstring). Thread-safe."""

    def __init__(self, engine, max_in_flight: int = 64, seed: Optional[int] = None):
        self.engine = engine
        self.max_in_flight = max_in_flight
        self._watches: Dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str], ArmCounts] = {}  # (window, arm) -> counts
        self._predictions: Dict[str, list] = {}               # model -> [(request_id, version, label, at)]
        self._predictions_dropped = 0
        self._in_flight = 0
        self._random = random.Random(seed).random
        self._cap_windows: Dict[int, list] = {}  # id(copy counts) -> [100 ms window, copies started in it]
        self.count_sources: List = []
        """Callables returning per-arm counts counted elsewhere since their last call, as rows
        (model, version, requests, errors, fallbacks, latency histogram): read at each publish and
        flush (``collect``)."""
        self.on_pair = None
        """Called with each compared pair, as ``inferlog.InferenceLog.pair``'s keywords (the server's
        inference log sets it), on the thread that compared it; None: pairs are only counted."""

    # ---- policy (the service's sync) ------------------------------------------------
    def publish(self, watches: Dict[str, Watch]) -> None:
        """Replaces the watched models whole; counts of windows no longer watched are kept until
        the next flush has published them. Counts from ``count_sources`` go to the old watches first."""
        self.collect()
        with self._lock:
            self._watches = {name: self._watched(w) for name, w in watches.items()}

    # requires _lock
    def _watched(self, w: Watch) -> "_Watched":
        arms, copies = {}, {}
        if w.canary is not None and w.window is not None:
            arms[w.canary] = self._arm_counts(w.window, "canary", w.canary)
            arms[w.stable] = self._arm_counts(w.window, "stable", w.stable)
            copies[w.canary] = (w.mirror_share, w.stable, arms[w.canary], "canary", w.mirror_max_per_s)
        if w.shadow is not None and w.shadow_window is not None:
            shadow_counts = self._arm_counts(w.shadow_window, "shadow", w.shadow)
            copies[w.stable] = (w.shadow_share, w.shadow, shadow_counts, "shadow", w.shadow_max_per_s)
        return _Watched(w, arms, copies)

    def watch(self, model: str) -> Optional["_Watched"]:
        """What is recorded of the model's requests, or None when nothing is (one dict read)."""
        return self._watches.get(model)

    # ---- the request path --------------------------------------------------------------
    def answered(self, w: "_Watched", inputs: dict, result, t0: float, request_id: Optional[str] = None,
                 on_loop: bool = False, counted: bool = False, copy: Optional[bool] = None) -> None:
        """Counts an answered request (a ``RoutedResult``) and starts its copy if it has one
        (``on_loop``: the caller runs on an event loop, where the copy is answered too).
        ``counted``: it was counted already (a count source); ``copy``: whether to copy it, drawn
        already (None: drawn here with the arm's share and cap)."""
        latency_ms = (time.perf_counter() - t0) * 1000.0
        primary = result.primary_version
        c = w.arms.get(primary)
        fell_back = result.fallback_reason is not None
        if c is not None and not counted:
            bucket = bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)
            with self._lock:
                c.requests += 1
                c.latency[bucket] += 1
                if fell_back:
                    c.errors += 1
                    c.fallbacks += 1
        if fell_back:
            return
        if request_id is not None and w.watch.record_predictions:
            label = predicted_label(result.outputs)
            if label is not None:
                self._keep_prediction(w.watch.name, request_id, result.version, label)
        target = w.copies.get(primary) if copy is not False else None
        if target is not None:
            self._copy(w.watch.name, target, inputs, result.outputs, on_loop, (request_id, result.version, latency_ms),
                       drawn=copy is True)

    def failed(self, w: "_Watched", error: BaseException, t0: float) -> None:
        """Counts a request whose routed version (``error.primary_version``) and chain failed.
        Refusals of the caller's own input (INVALID_ARGUMENT) are not the arm's errors."""
        c = w.arms.get(getattr(error, "primary_version", 0))
        if c is None or getattr(error, "grpc_code", "") == "INVALID_ARGUMENT":
            return
        bucket = bisect.bisect_left(LATENCY_BOUNDS_MS, (time.perf_counter() - t0) * 1000.0)
        with self._lock:
            c.requests += 1
            c.errors += 1
            c.latency[bucket] += 1

    # requires _lock
    def _arm_counts(self, window: str, arm: str, version: int) -> ArmCounts:
        c = self._counts.get((window, arm))
        if c is None:
            c = self._counts[(window, arm)] = ArmCounts(version)
        return c

    def _keep_prediction(self, model: str, request_id: str, version: int, label: str) -> None:
        with self._lock:
            rows = self._predictions.setdefault(model, [])
            if len(rows) >= MAX_PREDICTIONS:
                self._predictions_dropped += 1
                return
            rows.append((request_id, version, label, time.time()))

    def _copy(self, model: str, copy: tuple, inputs: dict, returned: dict, on_loop: bool, origin: tuple,
              drawn: bool = False) -> None:
        """Runs a canary request again on stable, or a stable request on the shadow, and compares
        (``drawn``: the share and the cap were applied already)."""
        share, target, c, arm, cap = copy
        if not drawn and share < 100.0 and self._random() * 100.0 >= share:
            return
        with self._lock:
            if not drawn and cap > 0 and not self._under_cap(c, cap):
                return
            if self._in_flight >= self.max_in_flight:
                c.dropped += 1
                return
            self._in_flight += 1
        t0 = time.perf_counter()
        try:
            handle = self.engine.model(model, target)
            fut = handle.submit_on_loop(inputs) if on_loop else handle.submit(inputs)
        except Exception:  # refused at once (queue full, unloaded): a dropped copy, never the caller's error
            with self._lock:
                self._in_flight -= 1
                c.dropped += 1
            return
        pair = (model, inputs, target, origin)  # what the inference log keeps of the pair (on_pair)
        fut.add_done_callback(lambda f: self._copied(f, c, arm, returned, t0, pair))

    # requires _lock
    def _under_cap(self, c: ArmCounts, cap: float) -> bool:
        """Whether one more copy fits this 100 ms window's share of ``cap`` per second."""
        window = int(time.monotonic() * 10)
        state = self._cap_windows.setdefault(id(c), [window, 0])
        if state[0] != window:
            state[0], state[1] = window, 0
        state[1] += 1
        return state[1] <= max(1, math.ceil(cap / 10))

    def _copied(self, fut, c: ArmCounts, arm: str, returned: dict, t0: float, pair: tuple) -> None:
        """A copy's answer (the engine's completion thread): compared with the returned one."""
        try:
            other = fut.result()
            agree, diff = compare(returned, other)
            error = None
        except InferlineError as e:
            agree, diff, error = False, 0.0, e
        latency_ms = (time.perf_counter() - t0) * 1000.0
        with self._lock:
            self._in_flight -= 1
            if error is not None:
                if isinstance(error, ResourceExhausted):  # shed by the other version: dropped, not failed
                    c.dropped += 1
                else:
                    c.copy_errors += 1
                return
            c.pairs += 1
            c.agree += int(agree)
            if diff > c.max_abs_diff:
                c.max_abs_diff = diff
            if arm == "shadow":  # the shadow's own latency (its requests are the copies)
                c.requests += 1
                c.latency[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)] += 1
        if self.on_pair is not None:
            (model, inputs, target, (request_id, version, returned_ms)) = pair
            self.on_pair(model=model, arm=arm, request_id=request_id, inputs=inputs, returned=returned,
                         returned_version=version, returned_latency_ms=returned_ms, other=other,
                         other_version=target, other_latency_ms=latency_ms, agree=agree)

    # ---- counts from elsewhere -----------------------------------------------------------
    def add_counts(self, rows) -> None:
        """Adds per-arm counts counted elsewhere (rows as ``count_sources`` return them) to the
        arms of the current watches; counts of versions on no watched arm are dropped."""
        with self._lock:
            for model, version, requests, errors, fallbacks, latency in rows:
                w = self._watches.get(model)
                c = w.arms.get(version) if w is not None else None
                if c is None:
                    continue
                c.requests += int(requests)
                c.errors += int(errors)
                c.fallbacks += int(fallbacks)
                for i, n in enumerate(latency[:len(c.latency)]):
                    c.latency[i] += int(n)

    def collect(self) -> None:
        """Adds what every count source counted since the last collect."""
        for source in list(self.count_sources):
            try:
                rows = source()
            except Exception:  # a source that is going away: its counts are lost, not the others'
                continue
            self.add_counts(rows)

    # ---- publishing (the registry thread) ----------------------------------------------
    def flush(self, registry, worker: str) -> None:
        """Writes this process's cumulative counts of every window it has seen (after collecting
        the count sources), and the predictions buffered since the last flush, to ``registry``;
        forgets windows no longer watched once written."""
        self.collect()
        watched = set()
        for w in self._watches.values():
            watched.update(x for x in (w.watch.window, w.watch.shadow_window) if x)
        with self._lock:
            by_window: Dict[str, dict] = {}
            for (window, arm), c in self._counts.items():
                by_window.setdefault(window, {})[arm] = c.to_dict()
            for key in [k for k in self._counts if k[0] not in watched]:
                self._cap_windows.pop(id(self._counts.pop(key)), None)
            predictions, self._predictions = self._predictions, {}
        for window, arms in by_window.items():
            registry.rollouts.put_counts(window, worker, arms)
        for model, rows in predictions.items():
            registry.rollouts.add_predictions(model, rows)

    def in_flight(self) -> int:
        """Copies running now."""
        return self._in_flight


class _Watched:
    """A Watch with the counts its requests go to (``arms``: routed version -> counts) and the
    copies they start (``copies``: routed version -> (share, target version, counts, arm, cap/s))."""

    __slots__ = ("watch", "arms", "copies")

    def __init__(self, watch: Watch, arms: dict, copies: dict):
        self.watch, self.arms, self.copies = watch, arms, copies


def compare(returned: dict, other: dict) -> Tuple[bool, float]:
    """(agree, max absolute difference) of two answers of one request, over the outputs both have.

    Agreement per output: integer, boolean and string outputs must be equal; float outputs with 2
    or more values per row (class scores) must have the same argmax in every row; other float
    outputs (regression) must be within 1% (relative) or 1e-6 (absolute). The difference is over
    the numeric outputs."""
    agree, diff = True, 0.0
    for name, a in returned.items():
        b = other.get(name)
        if b is None:
            continue
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            agree = False
            continue
        if a.dtype.kind in "fc" and a.size:
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            diff = max(diff, d) if np.isfinite(d) else float("inf")
            if a.ndim >= 2 and a.shape[-1] >= 2:
                agree &= bool(np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)))
            else:
                agree &= bool(np.allclose(a, b, rtol=0.01, atol=1e-6))
        else:
            if a.dtype.kind in "iub" and a.size:
                diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
            agree &= bool(np.array_equal(a, b))
    return agree, diff


def predicted_label(outputs: dict) -> Optional[str]:
    """The label an answer predicts, as text: its first integer or string output with one value
    per row (e.g. "label"), else the argmax of its first float output with 2 or more values per
    row (class scores); None for an answer without either (a regression). One-row answers only."""
    scores = None
    for a in outputs.values():
        a = np.asarray(a)
        if a.dtype.kind in "iuUSO" and a.size == 1:
            v = a.reshape(-1)[0]
            return v.decode() if isinstance(v, bytes) else str(v)
        if scores is None and a.dtype.kind == "f" and a.ndim >= 1 and a.shape[-1] >= 2 and a.size == a.shape[-1]:
            scores = a
    return None if scores is None else str(int(np.argmax(scores.reshape(-1))))


def merge(counts: List[dict]) -> dict:
    """One arm's counts summed over the workers' dicts (``ArmCounts.to_dict``)."""
    out = {"requests": 0, "errors": 0, "fallbacks": 0, "pairs": 0, "agree": 0, "copy_errors": 0,
           "dropped": 0, "max_abs_diff": 0.0, "latency": [0] * (len(LATENCY_BOUNDS_MS) + 1), "version": None}
    for c in counts:
        for k in ("requests", "errors", "fallbacks", "pairs", "agree", "copy_errors", "dropped"):
            out[k] += int(c.get(k, 0))
        out["max_abs_diff"] = max(out["max_abs_diff"], float(c.get("max_abs_diff", 0.0)))
        out["version"] = c.get("version", out["version"])
        for i, n in enumerate(c.get("latency", ())[:len(out["latency"])]):
            out["latency"][i] += int(n)
    return out


def percentile_ms(hist: List[int], q: float) -> Optional[float]:
    """The q-quantile (0-1) of a latency histogram: the upper bound of the bucket that holds it
    (at most 20% above the true value), None when empty; the overflow bucket reads as infinity."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank and n:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else float("inf")
    return float("inf")
