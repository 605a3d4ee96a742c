"""``/metrics`` on the metrics port: this worker's series, or with ``--workers N`` every worker's,
combined by the worker that the scrape reached.

Why not prometheus-client's multiprocess mode: it keeps every value in per-process mmap files
that each ``inc()``/``observe()`` writes, i.e. Python work per request, and it does not support
custom collectors; our values live in the core and are read at scrape time. Why not the parent
process: the workers share the metrics port with SO_REUSEPORT (the health probes must be
answered by a worker), so the kernel hands a scrape to any worker. Hence the peers: each worker
also listens on a Unix socket of its own (``<peers dir>/worker-<i>.sock``, the directory made by
the parent), which answers its families as JSON. The worker that a scrape reaches asks its peers
concurrently (``PEER_TIMEOUT_S``), computes its own meanwhile, and combines them
(``metrics_families.combine``: counters and histograms summed, gauges summed, taken once or
labelled ``worker`` as each means). ``inferline_metrics_workers{state="answered"|"missing"}``
tells a complete scrape from one that lacked a worker (whose counters then seem to drop: a
scrape that misses a worker reads to Prometheus as a counter reset).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import List, Optional

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from .metrics import CoreMetrics
from .metrics_families import Family, PromCollector, combine, from_json, to_json

log = logging.getLogger("inferline.metrics")

PEER_TIMEOUT_S = 3.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus reads (our names need no escaping)."""


def peer_socket(peers_dir: str, worker: int) -> str:
    return os.path.join(peers_dir, f"worker-{worker}.sock")


def render(families: List[Family]) -> bytes:
    """The Prometheus text exposition of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PromCollector(lambda: families))
    return generate_latest(registry)


class MetricsEndpoint:
    """Answers ``GET /metrics`` (``handle``) for worker ``worker`` of ``workers``; with more than
    one worker, ``start_peer`` serves this worker's families to the others."""

    def __init__(self, dataplane, worker: int = 0, workers: int = 1, peers_dir: Optional[str] = None):
        self.core = CoreMetrics(dataplane)
        self.worker, self.workers = worker, workers
        self.peers_dir = peers_dir if workers > 1 else None
        self._peer_runner: Optional[web.AppRunner] = None

    async def start_peer(self) -> None:
        if self.peers_dir is None:
            return
        app = web.Application()
        app.router.add_get("/families", self._families)
        self._peer_runner = web.AppRunner(app, access_log=None)
        await self._peer_runner.setup()
        path = peer_socket(self.peers_dir, self.worker)
        if os.path.exists(path):  # left by a worker of this server that died
            os.unlink(path)
        await web.UnixSite(self._peer_runner, path).start()

    async def stop_peer(self) -> None:
        if self._peer_runner is not None:
            await self._peer_runner.cleanup()
            self._peer_runner = None

    async def _families(self, request: web.Request) -> web.Response:
        return web.json_response(to_json(self.core.families()))

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def exposition(self) -> bytes:
        if self.peers_dir is None:
            return render(self.core.families())
        others = [i for i in range(self.workers) if i != self.worker]
        asks = [asyncio.ensure_future(self._ask(i)) for i in others]
        per_worker = [(str(self.worker), self.core.families())]
        missing = 0
        for i, got in zip(others, await asyncio.gather(*asks)):
            if got is None:
                missing += 1
            else:
                per_worker.append((str(i), got))
        families = combine(per_worker)
        state = Family("inferline_metrics_workers", "gauge", "Workers whose series this scrape combined "
                       "(answered) or lacked (missing).", ("state",))
        state.add(("answered",), len(per_worker))
        state.add(("missing",), missing)
        return render(families + [state])

    async def _ask(self, worker: int) -> Optional[List[Family]]:
        path = peer_socket(self.peers_dir, worker)
        try:
            timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path), timeout=timeout) as s:
                async with s.get("http://worker/families") as r:
                    r.raise_for_status()
                    return from_json(json.loads(await r.read()))
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError, ValueError, KeyError) as e:
            log.warning("metrics: worker %d did not answer (%s); its series are missing from this scrape",
                        worker, e)
            return None
