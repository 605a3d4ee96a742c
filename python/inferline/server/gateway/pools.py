"""The gateway's view of the pools: which replicas serve each model version, and forwarding a batch to one.

A pool is every replica of one model version (``inferline ray deploy`` runs one Ray Serve
application per pool; each replica is a full ``inferline serve --pin NAME:VERSION``). The gateway
learns the replicas' gRPC endpoints from a *source* (``() -> {"name:version": [endpoint, ...]}``: the
Ray directory in production, a fixed mapping in tests), re-read every ``refresh_s`` on a thread of
its own, so a request never waits on Ray.

``Pool.forward`` is the gateway model's backend: the core calls it once per batch from an executor
thread, with the batch's request-facing tensors. It sends them as one ModelInferRequest naming the
version explicitly to the replica with the fewest of this gateway's forwards in flight, over a
persistent channel, and returns the replica's outputs. A replica that cannot be reached or refuses
(UNAVAILABLE, RESOURCE_EXHAUSTED: it died mid-request, or it is overloaded) is set aside for
``DOWN_S`` and the batch is sent once more to another replica, if there is one and time is left:
inference is idempotent. Any other failure, or a second one, fails the batch (the core's fallback
chain and breaker take it from there).

Locking: ``_lock`` guards a pool's endpoint list and its in-flight counts; it is held for
bookkeeping only, never during a call.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import grpc
import numpy as np

from ...errors import Unavailable
from ..codec import KSERVE_TO_NUMPY, kserve_datatype
from ..proto import inference_pb2

log = logging.getLogger("inferline.gateway")

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DOWN_S = 3.0
"""How long a replica that failed a forward is passed over (the directory drops a dead one
within its heartbeat's ttl; a replica that was only overloaded comes back after this)."""
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
"""Failures that say the replica, not the request, is at fault: the batch may go to another one."""
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20),
                   ("grpc.keepalive_time_ms", 10_000), ("grpc.enable_retries", 0)]


def pool_name(name: str, version: int) -> str:
    """The pool of one model version, as the directory names it."""
    return f"{name}:{int(version)}"


class ReplicaFailed(Unavailable):
    """No replica of a pool could answer a batch."""


@dataclass
class _Replica:
    endpoint: str
    channel: grpc.Channel
    call: Callable
    inflight: int = 0
    down_until: float = 0.0
    forwards: int = 0


class Pool:
    """The replicas of one model version, as this gateway sees them."""

    def __init__(self, name: str, version: int, timeout_s: float = 10.0):
        self.name, self.version = name, int(version)
        self.timeout_s = timeout_s
        """A forward's deadline: the callers' own deadlines end their wait in the gateway sooner."""
        self._lock = threading.Lock()
        self._replicas: Dict[str, _Replica] = {}
        self._turn = itertools.count()
        self.forwards = 0
        """Forwards sent (a retried batch counts twice)."""
        self.retries = 0
        """Batches sent a second time, to another replica."""
        self.failures = 0
        """Batches no replica answered (the core's fallback chain took them)."""

    # ---- endpoints (the refresh thread) -------------------------------------
    def set_endpoints(self, endpoints: Iterable[str]) -> None:
        """Serves from exactly ``endpoints`` from now on: new ones get a channel, gone ones lose theirs
        once their forwards in flight are done (grpc closes a channel when its last call ends)."""
        wanted = sorted(set(endpoints))
        with self._lock:
            gone = [r for e, r in self._replicas.items() if e not in wanted]
            for e in wanted:
                if e not in self._replicas:
                    channel = grpc.insecure_channel(e, options=CHANNEL_OPTIONS)
                    call = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
                    self._replicas[e] = _Replica(e, channel, call)
            for r in gone:
                del self._replicas[r.endpoint]
        for r in gone:
            r.channel.close()

    def endpoints(self) -> List[dict]:
        """[{endpoint, inflight, down, forwards}] for status pages and tests."""
        now = time.monotonic()
        with self._lock:
            return [{"endpoint": r.endpoint, "inflight": r.inflight, "down": r.down_until > now,
                     "forwards": r.forwards} for r in self._replicas.values()]

    @property
    def ready(self) -> bool:
        """Whether any replica is known and not set aside."""
        now = time.monotonic()
        with self._lock:
            return any(r.down_until <= now for r in self._replicas.values())

    def close(self) -> None:
        self.set_endpoints(())

    # ---- forwarding (executor threads) --------------------------------------
    def forward(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The batch's outputs from one replica (a second one when the first is unreachable)."""
        body = self._encode(inputs)
        deadline = time.monotonic() + self.timeout_s
        tried: List[str] = []
        while True:
            replica = self._take(tried)
            if replica is None:
                self._count_failure()
                if tried:
                    raise ReplicaFailed(f"pool {pool_name(self.name, self.version)}: no other replica to retry on "
                                        f"after {tried[-1]} failed")
                raise ReplicaFailed(f"pool {pool_name(self.name, self.version)} has no replica serving")
            try:
                answer = replica.call(body, timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as e:
                code = e.code()
                self._give_back(replica, failed=code in RETRY_CODES)
                if code in RETRY_CODES and not tried and deadline - time.monotonic() > 0.005:
                    tried.append(replica.endpoint)
                    with self._lock:
                        self.retries += 1
                    continue
                self._count_failure()
                raise ReplicaFailed(f"pool {pool_name(self.name, self.version)}: replica {replica.endpoint}: "
                                    f"{code.name}: {e.details()}") from None
            self._give_back(replica, failed=False)
            return self._decode(answer)

    def _take(self, exclude: List[str]) -> Optional[_Replica]:
        """The replica with the fewest forwards in flight (ties in turn), counted as taken."""
        now = time.monotonic()
        with self._lock:
            candidates = [r for r in self._replicas.values() if r.endpoint not in exclude and r.down_until <= now]
            if not candidates:
                return None
            least = min(r.inflight for r in candidates)
            tied = [r for r in candidates if r.inflight == least]
            replica = tied[next(self._turn) % len(tied)]
            replica.inflight += 1
            replica.forwards += 1
            self.forwards += 1
            return replica

    def _count_failure(self) -> None:
        with self._lock:
            self.failures += 1

    def stats(self) -> dict:
        """Counters and the replicas' state, for the metrics endpoint."""
        now = time.monotonic()
        with self._lock:
            down = sum(r.down_until > now for r in self._replicas.values())
            return {"replicas_up": len(self._replicas) - down, "replicas_down": down, "forwards": self.forwards,
                    "retries": self.retries, "failures": self.failures,
                    "inflight": sum(r.inflight for r in self._replicas.values())}

    def _give_back(self, replica: _Replica, failed: bool) -> None:
        with self._lock:
            replica.inflight -= 1
            if failed:
                replica.down_until = time.monotonic() + DOWN_S

    def _encode(self, inputs: Mapping[str, np.ndarray]) -> bytes:
        req = inference_pb2.ModelInferRequest(model_name=self.name, model_version=str(self.version))
        for name, arr in inputs.items():
            t = req.inputs.add(name=name, datatype=kserve_datatype(arr.dtype))
            t.shape.extend(arr.shape)
            req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
        return req.SerializeToString()

    def _decode(self, body: bytes) -> Dict[str, np.ndarray]:
        resp = inference_pb2.ModelInferResponse.FromString(body)
        if len(resp.raw_output_contents) != len(resp.outputs):
            raise ReplicaFailed(f"pool {pool_name(self.name, self.version)}: the replica's answer has "
                                f"{len(resp.outputs)} outputs but {len(resp.raw_output_contents)} raw contents")
        out = {}
        for t, raw in zip(resp.outputs, resp.raw_output_contents):
            dtype = np.dtype(KSERVE_TO_NUMPY[t.datatype])
            out[t.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(t.shape))
        return out


@dataclass
class PoolSet:
    """Every pool this gateway forwards to, kept in step with ``source``."""

    source: Callable[[], Mapping[str, Iterable[str]]]
    """() -> {"name:version": [endpoint, ...]}: the replicas serving now (may raise; the last answer stands)."""
    refresh_s: float = 0.25
    timeout_s: float = 10.0
    _pools: Dict[str, Pool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None
    _latest: Mapping[str, Iterable[str]] = field(default_factory=dict)
    refresh_failures: int = 0

    def start(self) -> "PoolSet":
        """Reads the source once now (so the first loads see the replicas), then on a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="il-gateway-pools", daemon=True)
        self._thread.start()
        return self

    def pool(self, name: str, version: int) -> Pool:
        """The pool of one model version (made on first use; filled at the next refresh)."""
        key = pool_name(name, version)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = Pool(name, version, self.timeout_s)
                pool.set_endpoints(self._latest.get(key, ()))
            return pool

    def pools(self) -> Dict[str, Pool]:
        with self._lock:
            return dict(self._pools)

    def refresh(self) -> None:
        try:
            latest = {k: list(v) for k, v in self.source().items()}
        except Exception as e:  # Ray unreachable for a moment: keep forwarding to what we knew
            self.refresh_failures += 1
            if self.refresh_failures in (1, 10) or self.refresh_failures % 100 == 0:
                log.warning("pool endpoints not refreshed (%d times so far): %s", self.refresh_failures, e)
            return
        with self._lock:
            self._latest = latest
            pools = list(self._pools.items())
        for key, pool in pools:
            pool.set_endpoints(latest.get(key, ()))

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for pool in self.pools().values():
            pool.close()
