"""One replica of a pool: a Serve replica that runs `inferline serve --pin NAME:VERSION` as its child.

Serve places the replica (CPUs, a GPU), restarts it when its health check fails, and sizes the
pool; the child does the serving. Requests go from a gateway straight to the child's gRPC port,
so Serve's own request path (and its ongoing-request metric) is unused: the replica reads the
child's /metrics to report load, to the directory for the gateway and to Serve's autoscaler.

Lifecycle: __init__ starts the child and returns once it is ready (or raises with the child's
last log lines). A keeper thread then heartbeats the endpoint every `report_interval_s`. On
shutdown the keeper first removes the entry from the directory (the gateway stops choosing this
replica), then sends SIGTERM; the child refuses new work after its drain window and finishes
what it holds. The child sets PR_SET_PDEATHSIG=SIGKILL against the keeper thread that started it
(`inferline.server.parent`), so a replica process killed outright does not leave an orphan server
holding a port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Optional

import ray

from .directory import connect, directory, pool_name

HEARTBEAT_TTL_S = 3.0
"""Six heartbeats: a replica busy for a moment stays listed (the gateways learn of a dead one sooner,
from their failed forwards)."""
PROBE_SILENCE_S = 30.0
"""How long health probes may time out in a row (a saturated child) before the replica is unhealthy."""


def scrape_load(host: str, metrics_port: int, timeout_s: float = 1.0) -> dict:
    """The child's load gauges and busy-time counters from its Prometheus text, summed over labels."""
    wanted = {"inferline_requests_in_flight": "in_flight", "inferline_queue_rows": "queue_rows",
              "inferline_request_duration_seconds_sum": "busy_s", "inferline_decode_duration_seconds_sum": "busy_s",
              "inferline_encode_duration_seconds_sum": "busy_s"}
    out = {"in_flight": 0.0, "queue_rows": 0.0, "lobby": 0.0, "busy_s": 0.0, "latency_buckets": {}}
    with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=timeout_s) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if not line.startswith("inferline_"):
            continue
        head, _, value = line.rpartition(" ")
        family = head.split("{", 1)[0]
        key = wanted.get(family)
        if family == "inferline_request_duration_seconds_bucket":
            bound = float(head.split('le="', 1)[1].split('"', 1)[0])
            out["latency_buckets"][bound] = out["latency_buckets"].get(bound, 0.0) + float(value)
            continue
        if family == "inferline_admission_lobby_requests" and 'state="waiting"' in head:
            key = "lobby"
        if key:
            out[key] += float(value)
    return out


class LoadMeter:
    """Turns scrapes into the in-flight figure the autoscaler sizes on.

    A sampled gauge misses most requests of a fast model (each takes well under a millisecond), so
    the figure is the larger of the gauge and the mean concurrency since the last scrape, which is
    the busy time the child accumulated (core, decode and encode seconds) over the elapsed time
    (Little's law): every answered request counts, however short."""

    P99_MIN_REQUESTS = 20
    """Fewer answers than this since the last scrape: no p99 (too few to say)."""

    def __init__(self):
        self._last: Optional[tuple] = None
        self._buckets: dict = {}
        self.inflight = 0.0
        self.p99_s: Optional[float] = None
        """The p99 of the requests answered since the last scrape (a bucket bound), or None."""

    def update(self, scraped: dict, now: float) -> float:
        gauge = scraped["in_flight"] + scraped["lobby"]
        mean = 0.0
        if self._last is not None and now > self._last[0]:
            mean = max(0.0, scraped["busy_s"] - self._last[1]) / (now - self._last[0])
        self._last = (now, scraped["busy_s"])
        self.inflight = max(gauge, mean)
        self.p99_s = interval_p99(self._buckets, scraped.get("latency_buckets", {}), self.P99_MIN_REQUESTS)
        self._buckets = dict(scraped.get("latency_buckets", {}))
        return self.inflight


def interval_p99(before: dict, after: dict, min_requests: int) -> Optional[float]:
    """The p99 (the bound of its bucket) of the requests between two readings of a cumulative
    latency histogram ({bound: count}, +Inf included), or None with fewer than min_requests."""
    bounds = sorted(after)
    deltas = [after[b] - before.get(b, 0.0) for b in bounds]
    total = deltas[-1] if deltas else 0.0
    if total < min_requests:
        return None
    return next(b for b, n in zip(bounds, deltas) if n >= 0.99 * total)


class Replica:
    """The Serve deployment's class (see deploy.py for its options): one `inferline serve` child."""

    def __init__(self, name: str, version: int, repository: Optional[str] = None, host: str = "127.0.0.1",
                 advertise_host: Optional[str] = None, ready_timeout_s: float = 60.0,
                 report_interval_s: float = 0.5, drain_seconds: float = 3.0, extra_args: tuple = (),
                 slo_p99_ms: float = 200.0):
        self.pool = pool_name(name, version)
        self._slo_p99_s = slo_p99_ms / 1000.0
        self._model_path = f"/v2/models/{urllib.parse.quote(name, safe='')}/versions/{int(version)}/ready"
        self.replica_id = _replica_id()
        self._interval_s = report_interval_s
        self._meter = LoadMeter()
        self._load: dict = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: Optional[str] = None
        self._tmp = tempfile.mkdtemp(prefix="inferline-replica-")
        self._ports: dict = {}
        self._last_answer = time.monotonic()
        self.child: Optional[subprocess.Popen] = None
        cmd = [sys.executable, "-m", "inferline", "serve", "--pin", self.pool, "--host", host,
               "--ready-file", os.path.join(self._tmp, "ready.json"), "--grpc-port", "0", "--http-port", "0",
               "--metrics-port", "0", "--inference-log", "off", "--drain-seconds", str(drain_seconds),
               *extra_args]
        if repository:
            cmd += ["--repository", repository]
        anywhere = host in ("0.0.0.0", "::")
        self._host = advertise_host or (_node_ip() if anywhere else host)
        self._probe_host = "127.0.0.1" if anywhere else host  # where this process reaches the child's ports
        connect()
        self._directory = directory()
        self._keeper = threading.Thread(target=self._keep, args=(cmd, ready_timeout_s), daemon=True,
                                        name=f"inferline-replica-{self.pool}")
        self._keeper.start()
        self._ready.wait()
        if self._error:
            self._keeper.join(timeout=30)
            raise RuntimeError(self._error)

    # ---- Serve hooks -------------------------------------------------------
    def check_health(self) -> None:
        """Serve replaces the replica when this raises: the child exited, or it answered that it (or
        its version) is not ready. A probe that times out is not an answer: a child saturated by
        real load is slow, not broken, and replacing it would drop everything it holds. Only
        silence for PROBE_SILENCE_S counts as a failure."""
        if not self._keeper.is_alive():
            raise RuntimeError(f"{self.pool}: the keeper thread stopped; {self._error or 'no error recorded'}")
        if self.child is None or self.child.poll() is not None:
            code = None if self.child is None else self.child.returncode
            raise RuntimeError(f"{self.pool}: inferline serve exited (code {code}); {self._log_tail()}")
        for answer in (self._server_ready(), self._model_ready()):
            if answer is True:
                continue
            if answer.startswith("timeout") and time.monotonic() - self._last_answer < PROBE_SILENCE_S:
                return
            raise RuntimeError(f"{self.pool}: not ready: {answer}")
        self._last_answer = time.monotonic()

    def record_autoscaling_stats(self) -> dict:
        """Serve's custom autoscaling metrics (autoscale.py reads them): this replica's in-flight requests,
        and whether its p99 since the last heartbeat was above the version's ``slo.p99_ms``."""
        p99 = self._meter.p99_s
        return {"inflight": float(self._meter.inflight), "queue_rows": float(self._load.get("queue_rows", 0.0)),
                "over_slo": 1.0 if p99 is not None and p99 > self._slo_p99_s else 0.0}

    def __del__(self):
        """Serve's graceful shutdown calls this: leave the directory first, then drain the child."""
        self.shutdown()

    def shutdown(self) -> None:
        """Stops heartbeats, leaves the directory, drains the child; returns once it exited (idempotent)."""
        stop = getattr(self, "_stop", None)
        if stop is None:  # __init__ failed before the keeper existed
            return
        stop.set()
        keeper = getattr(self, "_keeper", None)
        if keeper is not None and keeper.is_alive() and keeper is not threading.current_thread():
            keeper.join(timeout=60)

    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self._ports.get('grpc_port')}"

    # ---- keeper thread -----------------------------------------------------
    def _keep(self, cmd: list, ready_timeout_s: float) -> None:
        """Owns the child from start to exit (the death signal is tied to this thread's life)."""
        try:
            self._start_child(cmd, ready_timeout_s)
        except Exception as e:
            self._error = str(e)
            self._terminate_child()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.wait(self._interval_s):
            try:
                self._heartbeat()
            except Exception as e:  # e.g. the directory restarting; the next round tries again
                self._error = f"last heartbeat failed: {e}"
        try:
            if ray.is_initialized():
                self._directory.remove.remote(self.pool, self.replica_id).future().result(timeout=5)
        except Exception:  # the directory is soft state: the entry also expires by itself
            pass
        self._terminate_child()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _start_child(self, cmd: list, ready_timeout_s: float) -> None:
        log = open(os.path.join(self._tmp, "serve.log"), "wb")
        env = {**os.environ, "INFERLINE_DIE_WITH_PARENT": str(os.getpid())}  # the child arms it itself
        self.child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        ready_file = os.path.join(self._tmp, "ready.json")
        deadline = time.monotonic() + ready_timeout_s
        while not os.path.exists(ready_file):
            if self.child.poll() is not None:
                raise RuntimeError(f"{self.pool}: inferline serve exited with code {self.child.returncode} "
                                   f"before it was ready; {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.pool}: inferline serve not ready after {ready_timeout_s:.0f} s; "
                                   f"{self._log_tail()}")
            time.sleep(0.05)
        with open(ready_file) as f:
            self._ports = json.load(f)
        while (answer := self._model_ready()) is not True:  # serving, but is the pinned version loaded?
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.pool}: inferline serve runs but the version is not ready after "
                                   f"{ready_timeout_s:.0f} s ({answer}); {self._log_tail()}")
            time.sleep(0.1)
        self._heartbeat()

    def _model_ready(self):
        """True when the child's REST frontend says the pinned version is ready; else why not."""
        return self._probe(f"http://{self._probe_host}:{self._ports['http_port']}{self._model_path}")

    def _server_ready(self):
        """True when the child's health endpoint says it is ready; else why not."""
        return self._probe(f"http://{self._probe_host}:{self._ports['metrics_port']}/v2/health/ready")

    @staticmethod
    def _probe(url: str):
        """True on HTTP 200; else a reason, starting with "timeout" when nothing answered in time."""
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                return True if r.status == 200 else f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}: {e.read().decode(errors='replace')[:200]}"
        except (TimeoutError, socket.timeout) as e:
            return f"timeout: {url}: {e}"
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                return f"timeout: {url}: {e.reason}"
            return f"{url}: {e.reason}"
        except OSError as e:
            return f"{url}: {e}"

    def _heartbeat(self) -> None:
        try:
            scraped = scrape_load(self._probe_host, self._ports["metrics_port"])
            self._meter.update(scraped, time.monotonic())
            self._load = {"inflight": self._meter.inflight, "in_flight_now": scraped["in_flight"],
                          "queue_rows": scraped["queue_rows"], "lobby": scraped["lobby"], "pid": os.getpid(),
                          "child_pid": self.child.pid}
        except Exception:  # a missed scrape keeps the last load; check_health judges the child
            pass
        if ray.is_initialized():  # outside Serve, after ray.shutdown(): a call would start a new local Ray
            self._directory.report.remote(self.pool, self.replica_id, self.endpoint, self._load, HEARTBEAT_TTL_S)

    def _terminate_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _log_tail(self, lines: int = 8) -> str:
        try:
            with open(os.path.join(self._tmp, "serve.log"), "rb") as f:
                tail = f.read().decode(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return "no log"
        return "last log lines: " + " | ".join(tail) if tail else "empty log"


def _replica_id() -> str:
    """Serve's replica id where there is one (so the directory and `serve status` agree), else random."""
    try:
        from ray import serve
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return uuid.uuid4().hex[:8]


def _node_ip() -> str:
    return ray.util.get_node_ip_address()
