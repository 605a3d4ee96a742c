"""The control listener: health and readiness on the metrics port, on a thread and event loop of
their own, so that an orchestrator's probes never wait behind inference work.

The inference frontends share one event loop; under a flood it runs a backlog of requests and
refusals, and a probe sent to the inference ports waits its turn in that backlog. The probes
here are answered by another thread (it needs the GIL only for the microseconds of each
answer; the interpreter hands it over within its switch interval, 5 ms), so liveness and
readiness stay prompt whatever the data-plane load. The same port carries ``/metrics``
(Prometheus text format, built from the core's counters at scrape time: metrics.py; with
``--workers N`` combined over every worker: metrics_workers.py).

    GET /v2/health/live | /v2/health/ready                    as on the REST port
    GET /v2/models/{m}[/versions/{v}]/ready                   as on the REST port
    GET /metrics                                              Prometheus exposition
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Optional

from .metrics_workers import MetricsEndpoint
from .rest import RestFrontend


class ControlListener:
    """Serves the health routes and ``/metrics`` on ``settings.metrics_port`` (0 = any free port;
    see ``port``) from a daemon thread running its own event loop. ``worker`` of ``workers``, with
    ``peers_dir``: the directory where the workers of one server find each other's metrics."""

    def __init__(self, dataplane, settings, worker: int = 0, peers_dir: Optional[str] = None):
        self._frontend = RestFrontend(dataplane, settings, health_only=True, port=settings.metrics_port)
        self.metrics = MetricsEndpoint(dataplane, worker, settings.workers, peers_dir)
        self._frontend.app.router.add_get("/metrics", self.metrics.handle)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self.port: Optional[int] = None

    def start(self, timeout_s: float = 30.0) -> int:
        """Binds and starts serving; returns the bound port. A bind failure is raised here."""
        bound: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(bound,), name="inferline-control", daemon=True)
        self._thread.start()
        self.port = bound.result(timeout_s)
        return self.port

    def _run(self, bound: concurrent.futures.Future) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._frontend.start())
            loop.run_until_complete(self.metrics.start_peer())
        except BaseException as e:  # the port is taken, TLS files unreadable...
            loop.run_until_complete(self._frontend.stop(0))
            loop.close()
            bound.set_exception(e)
            return
        self._loop = loop
        bound.set_result(self._frontend.port)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.metrics.stop_peer())
            loop.run_until_complete(self._frontend.stop(0.5))
            loop.close()

    async def stop(self, grace_s: float = 0.5) -> None:
        """``close`` from an event loop (the frontends' interface)."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stops serving and joins the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)


async def start_control(dataplane, settings, worker: int = 0, peers_dir: Optional[str] = None) -> ControlListener:
    """Starts the control listener on settings.host:settings.metrics_port (see ``.port``)."""
    listener = ControlListener(dataplane, settings, worker, peers_dir)
    await asyncio.get_running_loop().run_in_executor(None, listener.start)
    return listener
