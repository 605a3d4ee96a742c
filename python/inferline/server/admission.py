"""Admission control at the front door: refuse excess inference work early and cheaply.

Under overload a server that accepts everything answers nothing in time: requests queue, every
one waits past its caller's deadline, and the work is done for nobody. Three bounds keep goodput
near capacity, each checked before a request is decoded:

1. The transport: at most ``settings.max_concurrent_streams`` calls per HTTP/2 connection (gRPC).
   gRPC clients hold further calls on their side until one ends (only calls sent before the
   client has the server's settings are refused, REFUSED_STREAM, seen as UNAVAILABLE), so they
   never wake Python.
2. ``Admission.admit``: at most ``limit`` inference requests in flight in this worker, adaptive by
   default (AIMD against a latency target: each window whose latency EWMA exceeds the target cuts
   the limit by a fifth; a window that hit the limit without exceeding the target raises it by
   one twentieth), or static (``settings.admission_limit``). Over it: UNAVAILABLE / HTTP 503 with
   a retry hint, at the cost of a counter check.
3. The deadline: a request whose remaining deadline is shorter than its predicted latency (what
   it would wait and compute) is refused DEADLINE_EXCEEDED instead of being computed for nobody;
   the core also drops queued rows whose deadline passed before their batch runs. The prediction
   is the latency EWMA scaled to the load now: latency x (in flight + 1) / (in flight when that
   latency was measured + 1), so an estimate made under a burst does not outlive it (a worker
   whose last requests waited seconds admits the next one when nothing is ahead of it).

Refusing is not free in Python: a refused gRPC call costs the server about as much CPU as
answering a no-op one (~150-170 us; bench/server/bench_refusal_cost.py), a tenth of a 1.5 ms
model's request and most of a light one's. Clients that resend refusals at once therefore take
CPU from the model (bench/README.md, "Overload"); refusals costing microseconds need a native
frontend.

Every refusal is counted by reason (``stats()``). All calls happen on the worker's event loop
(one thread): no lock.
"""

from __future__ import annotations

import time
from typing import Optional

from ..errors import DeadlineExceeded, Unavailable

WINDOW_S = 0.1
"""How often the adaptive limit moves."""


class Overloaded(Unavailable):
    """Refused at admission: the worker has as many requests in flight as its limit."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Admission:
    """The worker's bound on inference requests in flight (see the module docstring)."""

    def __init__(self, limit: int = 0, *, initial: int = 1024, min_limit: int = 4, max_limit: int = 4096,
                 target_ms: float = 50.0, clock=time.monotonic):
        """``limit`` > 0: a static cap; 0: adaptive, starting at ``initial`` within
        [``min_limit``, ``max_limit``], aiming at ``target_ms`` of latency."""
        self.static = limit > 0
        self.limit = limit if self.static else initial
        self.min_limit, self.max_limit = min_limit, max_limit
        self.target_s = target_ms / 1000.0
        self.in_flight = 0
        self.latency_s = 0.0
        """EWMA of admitted requests' latency (seconds)."""
        self.load = 0.0
        """EWMA of the requests in flight ahead of each admitted one, measured with latency_s."""
        self.refused = {"overload": 0, "deadline": 0}
        self.admitted = 0
        self._clock = clock
        self._window_end = clock() + WINDOW_S
        self._hit_limit = False

    def predicted_latency_s(self) -> float:
        """What a request admitted now should expect to wait and compute (module docstring, 3)."""
        return self.latency_s * (self.in_flight + 1) / (self.load + 1)

    def admit(self, deadline_left_s: Optional[float]) -> tuple:
        """Admits one request (returns the token to give ``done``) or raises Overloaded /
        DeadlineExceeded. ``deadline_left_s``: seconds before the caller's deadline, None if none."""
        if self.in_flight >= self.limit:
            self._hit_limit = True
            self.refused["overload"] += 1
            retry_ms = max(1, int(self.latency_s * 1000))
            raise Overloaded(f"server overloaded: {self.in_flight} requests in flight (limit {self.limit}); "
                             f"retry after ~{retry_ms} ms", retry_ms)
        if deadline_left_s is not None and deadline_left_s < self.latency_s:
            predicted = self.predicted_latency_s()
            if deadline_left_s < predicted:
                self.refused["deadline"] += 1
                raise DeadlineExceeded(f"the deadline ({deadline_left_s * 1000:.1f} ms left) is shorter than the "
                                       f"predicted latency ({predicted * 1000:.1f} ms); refused before decoding")
        ahead = self.in_flight
        self.in_flight += 1
        self.admitted += 1
        return self._clock(), ahead

    def done(self, token: tuple) -> None:
        """The admitted request whose ``admit`` returned `token` has been answered (or failed)."""
        started, ahead = token
        self.in_flight -= 1
        now = self._clock()
        self.latency_s += 0.05 * ((now - started) - self.latency_s)
        self.load += 0.05 * (ahead - self.load)
        if now >= self._window_end:
            self._window_end = now + WINDOW_S
            if not self.static:
                if self.latency_s > self.target_s:
                    self.limit = max(self.min_limit, int(self.limit * 0.8))
                elif self._hit_limit:
                    self.limit = min(self.max_limit, self.limit + max(1, self.limit // 20))
            self._hit_limit = False

    def stats(self) -> dict:
        """The limit, what is in flight, the latency estimate and the refusals by reason."""
        return {"limit": self.limit, "adaptive": not self.static, "in_flight": self.in_flight,
                "latency_ms": self.latency_s * 1000.0, "admitted": self.admitted, "refused": dict(self.refused)}
