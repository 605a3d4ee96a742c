"""What the frontends count themselves, read by the metrics collector at scrape time.

Two things happen in Python per inference request that the core cannot see:

- Decode and encode (wire bytes <-> tensors). Each is timed with ``time.perf_counter_ns`` and
  recorded into a ``_core.StageHistogram`` per (model, version): one pybind call per stage and
  request (bench/server/stage_histogram_cost.py measures it), a relaxed atomic bucket increment
  on the core's bucket bounds, so the series re-bucket exactly like the core's latencies. Only
  requests answered OK are timed (the answer names the version).
- Errors the frontends answer with (a malformed message, an unknown model or output, a refusal,
  and the core's own errors as the client sees them). Counted on the error path only, so a
  successful request pays nothing; by (protocol, gRPC code, model). The model label is the name
  as sent when a version of it is loaded, ``"_unknown"`` for any other name (so a client cannot
  create series by sending names) and ``""`` when no name was read (a refusal before decoding,
  an undecodable message).

Both structures are mutated on the event loop of one worker and read by a scrape, maybe on
another thread: the reader copies the dict whole (one C call under the GIL) before iterating.

The native gRPC frontend counts the same things in C++; it is added as a source (``add_source``:
its ``errors()``, ``stage_snapshots()`` and ``admission()`` are read at scrape time), and the
readers here return the sum, so /metrics shows one set of series whichever frontend answered.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, Optional, Tuple

from .. import _core
from ..errors import InferlineError

log = logging.getLogger("inferline.metrics")

UNKNOWN_MODEL = "_unknown"
"""The model label of errors naming a model that no loaded version has."""
CODE_OVERRIDES = {"RESOURCE_EXHAUSTED": "UNAVAILABLE"}
"""As the frontends answer a full queue (grpc_frontend.GRPC_CODE_OVERRIDES; REST: 503)."""


def error_code(exc: BaseException) -> str:
    """The gRPC code name a frontend answers `exc` with (REST: the code of the error whose HTTP
    status the client got)."""
    if isinstance(exc, InferlineError):
        return CODE_OVERRIDES.get(exc.grpc_code, exc.grpc_code)
    from google.protobuf.message import DecodeError
    if isinstance(exc, DecodeError):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


class FrontendStats:
    """Error counts and decode/encode histograms of one worker's frontends. `served_names`: the
    names of the loaded models (called on the error path only, to bound the model label)."""

    def __init__(self, served_names: Callable[[], Iterable[str]]):
        self._served = served_names
        self._errors: Dict[Tuple[str, str, str], int] = {}
        self._stages: Dict[Tuple[str, str], tuple] = {}
        self._sources: list = []

    def add_source(self, source) -> None:
        """Counts kept elsewhere (the native gRPC frontend): ``source.errors()``,
        ``source.stage_snapshots()`` (as these methods return) and ``source.admission()`` (as
        ``Admission.stats()``), read at scrape time and added to this worker's own."""
        self._sources.append(source)

    def error(self, protocol: str, code: str, model: Optional[str]) -> None:
        """One inference request answered with `code` (a gRPC code name)."""
        key = (protocol, code, self._label(model))
        self._errors[key] = self._errors.get(key, 0) + 1

    def _label(self, model: Optional[str]) -> str:
        if not model:
            return ""
        try:
            served = model in set(self._served())
        except Exception:  # the model manager is shutting down: keep counting
            log.debug("served names not read", exc_info=True)
            served = False
        return model if served else UNKNOWN_MODEL

    def stages(self, model: str, version: str) -> tuple:
        """(decode, encode) histograms of a version; the per-request path: one dict lookup."""
        h = self._stages.get((model, version))
        if h is None:
            h = self._stages[(model, version)] = (_core.StageHistogram(), _core.StageHistogram())
        return h

    def errors(self) -> Dict[Tuple[str, str, str], int]:
        """{(protocol, code, model): count}: a copy (with the sources' counts added)."""
        out = dict(self._errors)
        for source in self._sources:
            for key, n in source.errors().items():
                out[key] = out.get(key, 0) + n
        return out

    def stage_snapshots(self) -> Dict[Tuple[str, str], tuple]:
        """{(model, version): (decode snapshot, encode snapshot)}, in µs as ``Model.stats()``'s histograms
        (each with at least ``buckets``, ``sum`` and ``count``; a source's merged in)."""
        out = {key: (d.snapshot(), e.snapshot()) for key, (d, e) in dict(self._stages).items()}
        for source in self._sources:
            for key, pair in source.stage_snapshots().items():
                mine = out.get(key)
                out[key] = pair if mine is None else tuple(merge_snapshots(a, b) for a, b in zip(mine, pair))
        return out

    def admission_refused(self, own: dict) -> Dict[str, int]:
        """Refusals by reason: `own` (``Admission.stats()["refused"]``) plus the sources'."""
        out = dict(own)
        for source in self._sources:
            for reason, n in source.admission()["refused"].items():
                out[reason] = out.get(reason, 0) + n
        return out


    def lobby(self) -> Dict[str, int]:
        """The native frontends' admission lobbies summed: waiting now (held: of those, the hopeless),
        admitted from it so far; all zero without one."""
        out = {"parked": 0, "held": 0, "admitted": 0}
        for source in self._sources:
            lobby = source.admission().get("lobby") or {}
            for key in out:
                out[key] += int(lobby.get(key, 0))
        return out

    def tap_dropped(self) -> Optional[int]:
        """Records the native frontend's request tap dropped (its queue full); None without one."""
        counts = [s.tap_dropped() for s in self._sources if hasattr(s, "tap_dropped")]
        return sum(counts) if counts else None


def merge_snapshots(a: dict, b: dict) -> dict:
    """One histogram snapshot from two on the same (the core's) bucket bounds: buckets, sum and count."""
    buckets: Dict[int, int] = dict(a["buckets"])
    for upper, n in b["buckets"]:
        buckets[upper] = buckets.get(upper, 0) + n
    return {"buckets": sorted(buckets.items()), "sum": a["sum"] + b["sum"], "count": a["count"] + b["count"]}
