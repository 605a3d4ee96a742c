"""`inferline serve`: the server process(es).

One worker = one engine + the registry watcher + the gRPC and REST frontends on
one asyncio loop (the gRPC port served by the native C++ frontend where this build has it,
``--frontend``; native.py), and the control listener (health probes on the metrics port) on
a thread and loop of its own (control.py). ``--workers N`` starts N such processes sharing the ports
(SO_REUSEPORT), each with its own engine; only one server's workers may share a
port (``PortGuard``): a second, independent server fails with "address in use". The
workers also find each other's metrics through Unix sockets in a private directory that the
parent makes (metrics_workers.py), so one scrape of the metrics port covers them all.

SIGTERM/SIGINT: readiness turns false at once, but the frontends keep accepting
for ``drain_seconds`` (load balancers need a moment to see readiness turn
false; a second signal cuts the window short), then stop accepting; in-flight
requests finish (bounded by ``shutdown_grace_s``), queued ones are drained, exit 0.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import multiprocessing
import os
import signal
import shutil
import socket
import sys
import tempfile
from typing import Optional

from .. import inferlog
from ..engine import Engine
from ..errors import Unavailable
from .gateway import remote_loader
from ..routing import Router
from .dataplane import DataPlane
from ..service.sync import ModelManager
from .settings import ServerSettings

log = logging.getLogger("inferline.server")


class AddressInUse(Unavailable):
    """A port this server needs is held by another process."""


class PortGuard:
    """Claims this server's ports for the lifetime of the process that holds the guard.

    Two checks per port: an abstract Unix socket named after the address (Linux; scoped like
    ports, per network namespace, and released by the kernel when the holder exits), which a
    second inferline server cannot bind even though this server's workers use SO_REUSEPORT;
    and a probe bind without SO_REUSEPORT, which fails when any other process listens there.
    Port 0 (any free port) needs no guard.
    """

    def __init__(self, host: str, ports: dict):
        self._held: list = []
        try:
            for what, port in ports.items():
                if port:
                    self._claim(what, host, port)
        except BaseException:
            self.close()
            raise

    def _claim(self, what: str, host: str, port: int) -> None:
        taken = f"{what} port {port} on {host}: address in use"
        if sys.platform.startswith("linux"):
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                lock.bind(f"\0inferline-serve:{host}:{port}")
            except OSError as e:
                lock.close()
                if e.errno == errno.EADDRINUSE:
                    raise AddressInUse(f"{taken} (another inferline server serves it)") from None
                raise
            self._held.append(lock)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise AddressInUse(f"{what} port {port}: cannot resolve host {host!r}: {e}") from None
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
            try:
                probe.bind(infos[0][4])
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise AddressInUse(f"{taken} (another process listens there)") from None
                raise AddressInUse(f"{what} port {port} on {host}: cannot bind: {e.strerror}") from None

    def close(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()


async def run_worker(settings: ServerSettings, worker: int = 0, ready_message: bool = True,
                     peers_dir: Optional[str] = None) -> int:
    from .control import start_control
    from .grpc_frontend import start_grpc
    from .native import start_native_grpc
    from .rest import start_rest

    engine = Engine(gpu_memory_budget=settings.gpu_memory_budget)
    router = Router(engine)  # the manager publishes routing snapshots to it; the data plane routes with it
    pools = _gateway_pools(settings)  # None unless --ray: then versions are forwarders to their pools
    manager = ModelManager(engine, settings.repository, settings.poll_interval_s, router=router,
                           pin=settings.pinned(), loader=remote_loader(pools) if pools is not None else None)
    manager.pools = pools  # the metrics endpoint reports them
    await manager.sync()
    dataplane = DataPlane.for_settings(manager, settings, router=router)
    dataplane.inference_log = inferlog.for_server(settings, worker, manager.recorder)  # None when off
    start = start_native_grpc if settings.frontend == "native" else start_grpc
    grpc_frontend = await start(dataplane, settings)
    rest_frontend = await start_rest(dataplane, settings)
    control = await start_control(dataplane, settings, worker, peers_dir)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal():
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if ready_message:
        _print_ready(settings, grpc_frontend.port, rest_frontend.port, control.port, manager, worker)
    if settings.ready_file and worker == 0:
        _write_ready_file(settings.ready_file, grpc_frontend.port, rest_frontend.port, control.port)
    poller = asyncio.create_task(dataplane.poll(stop))
    await stop.wait()

    dataplane.accepting = False  # ready -> false first, so balancers move traffic away
    if settings.drain_seconds > 0:
        _say(f"inferline worker {worker}: readiness false; still accepting for {settings.drain_seconds:g} s "
             f"(signal again to stop now)")
        try:
            await asyncio.wait_for(hurry.wait(), settings.drain_seconds)
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(grpc_frontend.stop(settings.shutdown_grace_s), rest_frontend.stop(settings.shutdown_grace_s))
    await poller
    await control.stop()  # probes answered until the end: live, ready false
    if dataplane.inference_log is not None:
        dataplane.inference_log.close()  # writes what is buffered
    manager.close()
    engine.close()  # answers anything still queued; on the loop thread (it detaches the loop's reader)
    if pools is not None:
        pools.close()
    _say(f"inferline worker {worker} (pid {os.getpid()}) stopped")
    return 0


def _gateway_pools(settings: ServerSettings):
    """The gateway's pools, kept in step with the replicas (``--ray``), or None for a plain server."""
    if not settings.ray:
        return None
    from .gateway import PoolSet, pool_source
    return PoolSet(pool_source(settings.ray)).start()


def _print_ready(settings, grpc_port, http_port, control_port, manager, worker) -> None:
    scheme = "https" if settings.tls else "http"
    served = ", ".join(f"{n}:{v}{' (live)' if routed else ''}" for n, v, routed in manager.served()) or "none"
    _say(f"inferline worker {worker} (pid {os.getpid()}): REST {scheme}://{settings.host}:{http_port}/v2  "
         f"gRPC {settings.host}:{grpc_port} ({settings.frontend or 'python'} frontend)  "
         f"health {scheme}://{settings.host}:{control_port}/v2/health  models ready: {served}")


def _write_ready_file(path: str, grpc_port: int, http_port: int, control_port: int) -> None:
    """The bound ports as JSON, written whole (a reader never sees half a file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"grpc_port": grpc_port, "http_port": http_port, "metrics_port": control_port,
                   "pid": os.getpid()}, f)
    os.replace(tmp, path)


def _say(line: str) -> None:
    """One line to stdout in one write: workers share the pipe, and print() writes the text and its newline
    separately when stdout is unbuffered, so two workers' banners could run together on one line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _worker_main(settings: ServerSettings, worker: int, peers_dir: Optional[str] = None) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s worker{worker} %(levelname)s %(message)s")
    sys.exit(asyncio.run(run_worker(settings, worker, peers_dir=peers_dir)))


def _warn_exposure(settings: ServerSettings) -> None:
    if settings.loopback_only:
        return
    if not settings.admin_token:
        print(f"warning: listening on {settings.host} (beyond loopback) without --admin-token: anyone who reaches "
              f"the ports can run inference; repository control (load/unload) is refused until a token is set",
              file=sys.stderr, flush=True)
    if not settings.tls:
        print(f"warning: listening on {settings.host} without TLS (--tls-cert/--tls-key): requests travel in the "
              f"clear", file=sys.stderr, flush=True)


def serve(settings: ServerSettings) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the exit status."""
    from ..models.service import open_registry
    from .native import choose_frontend

    settings.frontend, why_not_native = choose_frontend(settings.frontend)  # the workers all serve this one
    if why_not_native:
        print(f"note: gRPC is served by the Python frontend: {why_not_native}", file=sys.stderr, flush=True)
    guard = PortGuard(settings.host, {"HTTP": settings.http_port, "gRPC": settings.grpc_port,
                                      "metrics": settings.metrics_port})
    try:
        _warn_exposure(settings)
        open_registry(settings.repository).close()  # seeds the default repository once, before any worker
        if settings.workers <= 1:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
            return asyncio.run(run_worker(settings))
        if 0 in (settings.http_port, settings.grpc_port, settings.metrics_port):
            raise SystemExit("--workers > 1 needs fixed ports (the workers share them)")
        return _run_workers(settings)
    finally:
        guard.close()


def _run_workers(settings: ServerSettings) -> int:
    peers_dir = tempfile.mkdtemp(prefix="inferline-metrics-")  # the workers' metrics sockets (0700)
    try:
        return _start_workers(settings, peers_dir)
    finally:
        shutil.rmtree(peers_dir, ignore_errors=True)


def _start_workers(settings: ServerSettings, peers_dir: str) -> int:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(settings, i, peers_dir), name=f"inferline-worker-{i}")
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
