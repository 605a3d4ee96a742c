"""`inferline serve`: the server process(es).

One worker = one engine + the registry watcher + the gRPC and REST frontends on
one asyncio loop. ``--workers N`` starts N such processes sharing the ports
(SO_REUSEPORT), each with its own engine. SIGTERM/SIGINT: readiness turns
false, the frontends stop accepting, in-flight requests finish (bounded by
``shutdown_grace_s``), queued requests are drained, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys

from ..engine import Engine
from .dataplane import DataPlane
from .model_manager import ModelManager
from .settings import ServerSettings

log = logging.getLogger("inferline.server")


async def run_worker(settings: ServerSettings, worker: int = 0, ready_message: bool = True) -> int:
    from .grpc_frontend import start_grpc
    from .rest import start_rest

    engine = Engine()
    manager = ModelManager(engine, settings.repository, settings.poll_interval_s)
    await manager.sync()
    dataplane = DataPlane(manager)
    grpc_frontend = await start_grpc(dataplane, settings)
    rest_frontend = await start_rest(dataplane, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_message:
        _print_ready(settings, grpc_frontend.port, rest_frontend.port, manager, worker)
    poller = asyncio.create_task(manager.run(stop))
    await stop.wait()

    dataplane.accepting = False  # ready -> false first, so balancers move traffic away
    await asyncio.gather(grpc_frontend.stop(settings.shutdown_grace_s), rest_frontend.stop(settings.shutdown_grace_s))
    await poller
    manager.close()
    engine.close()  # answers anything still queued; on the loop thread (it detaches the loop's reader)
    print(f"inferline worker {worker} (pid {os.getpid()}) stopped", flush=True)
    return 0


def _print_ready(settings, grpc_port, http_port, manager, worker) -> None:
    scheme = "https" if settings.tls else "http"
    served = ", ".join(f"{n}:{v}{' (live)' if routed else ''}" for n, v, routed in manager.served()) or "none"
    print(f"inferline worker {worker} (pid {os.getpid()}): REST {scheme}://{settings.host}:{http_port}/v2  "
          f"gRPC {settings.host}:{grpc_port}  models ready: {served}", flush=True)


def _worker_main(settings: ServerSettings, worker: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{worker} %(levelname)s %(message)s")
    sys.exit(asyncio.run(run_worker(settings, worker)))


def serve(settings: ServerSettings) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the exit status."""
    from ..registry.service import open_registry

    open_registry(settings.repository).close()  # seeds the default repository once, before any worker
    if settings.workers <= 1:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return asyncio.run(run_worker(settings))
    if 0 in (settings.http_port, settings.grpc_port):
        raise SystemExit("--workers > 1 needs fixed ports (the workers share them)")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(settings, i), name=f"inferline-worker-{i}")
             for i in range(settings.workers)]
    for p in procs:
        p.start()

    def forward(signum, _frame):
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return 0 if all(p.exitcode == 0 for p in procs) else 1


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the registry's live models over gRPC and REST (KServe v2)")
    p.add_argument("--repository", metavar="URL_OR_DIR", help="registry (default: INFERLINE_REPOSITORY or "
                                                               "~/.inferline/repository with the demo models)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 8002; reserved)")
    p.add_argument("--workers", type=int, help="processes sharing the ports (default 1)")
    p.add_argument("--poll-interval", type=float, dest="poll_interval_s", help="registry poll seconds (default 2)")
    p.add_argument("--admin-token", help="bearer token for load/unload (or INFERLINE_ADMIN_TOKEN)")
    p.add_argument("--tls-cert", help="PEM certificate (with --tls-key: TLS for gRPC and HTTP)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--max-message-bytes", type=int, help="largest accepted request (default 64 MiB)")


def run(args) -> int:
    fields = ("repository", "host", "http_port", "grpc_port", "metrics_port", "workers", "poll_interval_s",
              "admin_token", "tls_cert", "tls_key", "max_message_bytes")
    settings = ServerSettings.from_env(**{f: getattr(args, f) for f in fields})
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    return serve(settings)
