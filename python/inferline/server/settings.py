"""Server settings: typed, documented once, each one a flag and an ``INFERLINE_*`` variable.

Every field of ``ServerSettings`` is the flag ``--<flag>`` of ``inferline serve`` and the
environment variable ``INFERLINE_<FLAG>`` (dashes become underscores, upper case): the
flag's name is the one source of both, so the two cannot drift apart. Precedence:
defaults < environment < flags. A value that does not parse is a one-line
``SettingsError`` naming the variable or flag; an ``INFERLINE_*`` variable that names no
setting (a typo) draws a warning.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Optional

from ..engine.gpu_memory import parse_size
from ..errors import InvalidArgument

ENV_PREFIX = "INFERLINE_"
FRONTENDS = ("native", "python")
"""What may serve the gRPC port (--frontend)."""

# INFERLINE_* variables read elsewhere (registry, build, tests): not server settings, not typos.
OTHER_ENV = frozenset({
    "INFERLINE_REGISTRY_DB", "INFERLINE_S3_ENDPOINT_URL", "INFERLINE_REQUIRE_GPU", "INFERLINE_CI_VENV",
    "INFERLINE_PG_BIN",
})


class SettingsError(InvalidArgument):
    """A setting's value does not parse or is out of range."""


def _setting(default, help: str, flag: Optional[str] = None, metavar: Optional[str] = None, parse=None):
    """`parse(text) -> value` for a setting whose text is not a plain int/float/str (InvalidArgument if bad)."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "parse": parse})


@dataclass
class ServerSettings:
    repository: Optional[str] = _setting(
        None, "registry directory or fsspec URL (default ~/.inferline/repository, seeded with the demo models)",
        metavar="URL_OR_DIR")
    host: str = _setting("127.0.0.1", "address to bind (default 127.0.0.1: this machine only)")
    http_port: int = _setting(8000, "REST (KServe v2 HTTP/JSON) port (default 8000; 0 = any free port)")
    grpc_port: int = _setting(8001, "gRPC (inference.GRPCInferenceService) port (default 8001; 0 = any free port)")
    metrics_port: int = _setting(8002, "health and readiness probes, answered off the inference loop, and "
                                       "Prometheus /metrics (default 8002; 0 = any free port)")
    frontend: Optional[str] = _setting(
        None, "what serves the gRPC port: 'native' (C++: inference requests go from the wire to the core "
              "without Python) or 'python' (grpc.aio); default native where this build has it, else python. "
              "REST and the metrics port are Python either way", metavar="{native,python}")
    workers: int = _setting(1, "server processes sharing the ports, each with its own engine (default 1)")
    poll_interval_s: float = _setting(2.0, "seconds between registry polls for new live/canary versions (default 2)",
                                      flag="poll-interval")
    admin_token: Optional[str] = _setting(
        None, "bearer token for repository control (load/unload); without one, control is refused "
              "unless the server listens on loopback only")
    tls_cert: Optional[str] = _setting(None, "PEM certificate (with --tls-key: TLS for gRPC and HTTP)")
    tls_key: Optional[str] = _setting(None, "PEM private key")
    max_message_bytes: int = _setting(64 * 1024 * 1024, "largest accepted request in bytes (default 64 MiB)")
    max_json_bytes: int = _setting(
        8 * 1024 * 1024, "largest JSON in a REST request (the whole body, or the part before binary tensor "
                         "data): parsing is paid on the event loop, so large tensors travel as binary data "
                         "(default 8 MiB)")
    drain_seconds: float = _setting(
        3.0, "on SIGTERM/SIGINT: seconds to keep accepting with readiness false, so load balancers "
             "move traffic away before the listeners close (default 3; a second signal skips it)")
    max_concurrent_streams: int = _setting(
        0, "gRPC calls one connection may have open at once; clients hold more on their side, oldest first. "
           "0 = the frontend's own: 128 on the Python frontend (more never reach its event loop), 1024 on "
           "the native one, whose admission lobby serves the newest waiter first, so it should see the "
           "calls rather than leave them to go stale in the client (default 0)")
    max_streams: int = _setting(
        1024, "ModelStreamInfer streams one worker may have open at once; more are refused at once "
              "(UNAVAILABLE) (default 1024)")
    stream_idle_timeout_s: float = _setting(
        300.0, "seconds a ModelStreamInfer stream may go without a request (with none being answered) or "
               "leave an answer unread before it is closed (UNAVAILABLE); 0 = never (default 300)",
        flag="stream-idle-timeout")
    admission_limit: int = _setting(
        0, "inference requests one worker may have in flight; more are refused at once (UNAVAILABLE, "
           "HTTP 503); 0 = adaptive: the limit follows the measured latency (default 0)")
    admission_target_ms: float = _setting(
        50.0, "adaptive admission: the in-flight latency the limit aims at, in ms (default 50)")
    admission_lobby: int = _setting(
        -1, "native gRPC frontend: inference requests over the admission limit that may wait, undecoded, for a "
            "slot instead of being refused at once; each freed slot goes to the newest that can still meet its "
            "deadline, the rest are answered DEADLINE_EXCEEDED when they can no longer meet it, UNAVAILABLE after "
            "4 x --admission-target-ms without a deadline, or the oldest UNAVAILABLE when the lobby is full. "
            "-1 = 8 x the limit's maximum, 0 = none: refused at once (the Python frontend's way) (default -1)")
    overload_sched: str = _setting(
        "batch", "native gRPC frontend: how its threads (gRPC's and its own) are scheduled while it refuses "
                 "requests (overload): 'batch' (Linux SCHED_BATCH: they keep their share of the CPU but no longer "
                 "preempt the model's threads at every arriving call; back to normal a second after the last "
                 "refusal) or 'normal' (default batch)", metavar="{batch,normal}")
    overload_coalesce: str = _setting(
        "on", "native gRPC frontend: while it refuses requests (overload), its TCP connections run Nagle's "
              "algorithm, so that the many small refusals to one client leave in fewer segments (the kernel's "
              "TCP costs the server's CPU per segment); 'off' keeps TCP_NODELAY throughout. Back to TCP_NODELAY "
              "a second after the last refusal; a calm server never waits for an acknowledgement. Linux only "
              "(default on)", metavar="{on,off}")
    shutdown_grace_s: float = _setting(10.0, "after the drain window: seconds in-flight requests may take "
                                             "to finish (default 10)", flag="shutdown-grace")
    gpu_memory_budget: Optional[int] = _setting(
        None, "GPU memory the models on each CUDA device may take together, per worker: bytes, or with K, M, G "
              "(powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. 40GiB. A load whose estimate (artifact + "
              "the core's buffers) or measured use does not fit is refused, and a new version that does not fit "
              "beside the one it replaces leaves that one serving (default: no limit)",
        metavar="SIZE", parse=parse_size)
    inference_log: Optional[str] = _setting(
        None, "where the inference log (sampled requests, rollout pairs, hardware samples; Parquet) goes: a "
              "directory or an fsspec URL, or 'off' (default ~/.inferline/logs)", metavar="DIR_OR_URL")
    inference_log_retention_days: int = _setting(14, "days of inference records kept besides today's (default 14)")
    hardware_log_retention_days: int = _setting(30, "days of hardware samples kept besides today's (default 30)")
    hardware_log_interval_s: float = _setting(10.0, "seconds between hardware samples in the inference log; "
                                                    "0 = none (default 10)", flag="hardware-log-interval")
    inference_log_flush_s: float = _setting(60.0, "seconds between the inference log's writes: one file per "
                                                  "model and date each time (default 60)", flag="inference-log-flush")

    pin: Optional[str] = _setting(
        None, "serve only NAME:VERSION, as that model's route, whatever its state in the registry, without its "
              "rollouts or fallbacks: one replica of a pool behind an inferline gateway (default: every live and "
              "canary version)", metavar="NAME:VERSION")
    ready_file: Optional[str] = _setting(
        None, "once serving, write the bound ports and the pid to this file as JSON (written whole, by rename): "
              "how a supervisor that asked for port 0 learns the ports", metavar="PATH")
    ray: Optional[str] = _setting(
        None, "gateway mode: the Ray cluster (an address such as 127.0.0.1:6379, or 'auto') whose inferline pools "
              "(`inferline ray deploy`) answer the requests; this server applies the routing policy and forwards "
              "each batch to a replica of the chosen version's pool instead of loading models itself",
        metavar="ADDRESS")

    # ---- one source for flags and variables ---------------------------------
    @staticmethod
    def flag(f: dataclasses.Field) -> str:
        return f.metadata.get("flag") or f.name.replace("_", "-")

    @classmethod
    def env_name(cls, f: dataclasses.Field) -> str:
        return ENV_PREFIX + cls.flag(f).replace("-", "_").upper()

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "ServerSettings":
        """Defaults, then INFERLINE_<FLAG> variables, then explicit overrides (those not None)."""
        environ = os.environ if environ is None else environ
        values = {}
        known = set(OTHER_ENV)
        for f in dataclasses.fields(cls):
            name = cls.env_name(f)
            known.add(name)
            raw = environ.get(name)
            if raw is not None:
                values[f.name] = _parse(f, raw, name)
        unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
        if unknown:
            names = ", ".join(cls.env_name(f) for f in dataclasses.fields(cls))
            print(f"warning: ignoring unknown environment variable(s) {', '.join(unknown)} "
                  f"(server settings: {names})", file=sys.stderr, flush=True)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"--{name.replace('_', '-')} {port}: a port is 0..65535")
        if self.frontend is not None and self.frontend not in FRONTENDS:
            raise SettingsError(f"--frontend {self.frontend}: one of {', '.join(FRONTENDS)}")
        if self.workers < 1:
            raise SettingsError(f"--workers {self.workers}: at least 1")
        for name in ("poll_interval_s", "drain_seconds", "shutdown_grace_s", "stream_idle_timeout_s"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name}: must not be negative")
        if self.max_concurrent_streams < 0:
            raise SettingsError(f"--max-concurrent-streams {self.max_concurrent_streams}: 0 (the frontend's "
                                f"default) or at least 1")
        if self.max_streams < 1:
            raise SettingsError(f"--max-streams {self.max_streams}: at least 1")
        if self.admission_limit < 0:
            raise SettingsError(f"--admission-limit {self.admission_limit}: 0 (adaptive) or a positive cap")
        if self.admission_lobby < -1:
            raise SettingsError(f"--admission-lobby {self.admission_lobby}: -1 (8 x the limit), 0 (none) or a size")
        if self.overload_sched not in ("batch", "normal"):
            raise SettingsError(f"--overload-sched {self.overload_sched!r}: 'batch' or 'normal'")
        if self.overload_coalesce not in ("on", "off"):
            raise SettingsError(f"--overload-coalesce {self.overload_coalesce!r}: 'on' or 'off'")
        if not self.admission_target_ms > 0:
            raise SettingsError(f"--admission-target-ms {self.admission_target_ms}: must be above 0")
        if self.max_message_bytes < 1024:
            raise SettingsError(f"--max-message-bytes {self.max_message_bytes}: at least 1024")
        if self.max_json_bytes < 1024:
            raise SettingsError(f"--max-json-bytes {self.max_json_bytes}: at least 1024")
        if self.gpu_memory_budget is not None and self.gpu_memory_budget < 1:
            raise SettingsError(f"--gpu-memory-budget {self.gpu_memory_budget}: at least 1 byte")
        if min(self.inference_log_retention_days, self.hardware_log_retention_days) < 1:
            raise SettingsError("--inference-log-retention-days and --hardware-log-retention-days: at least 1")
        if self.hardware_log_interval_s < 0 or not self.inference_log_flush_s > 0:
            raise SettingsError("--hardware-log-interval: 0 or more; --inference-log-flush: above 0")
        if self.pin is not None:
            self.pinned()  # raises when it does not parse
            if self.ray:
                raise SettingsError("--pin and --ray exclude each other: a pool replica is not a gateway")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key go together")

    def pinned(self) -> Optional[tuple]:
        """(name, version) of ``--pin``, or None."""
        if self.pin is None:
            return None
        name, _, version = self.pin.rpartition(":")
        try:
            number = int(version)
        except ValueError:
            number = 0
        if not name or number < 1:
            raise SettingsError(f"--pin {self.pin!r}: expected NAME:VERSION, e.g. digits-mlp:1")
        return name, number

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def loopback_only(self) -> bool:
        """True when the server can be reached from this machine only."""
        return is_loopback(self.host)

    @property
    def control_allowed_without_token(self) -> bool:
        """Repository control with no token configured: allowed only on a loopback-only server."""
        return self.loopback_only


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address ('' and 0.0.0.0 are not)."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _parse(f: dataclasses.Field, raw: str, where: str):
    parse = f.metadata.get("parse")
    if parse is not None:
        try:
            return parse(raw)
        except InvalidArgument as e:
            raise SettingsError(f"{where}={raw!r}: {e}") from None
    kind = str(f.type)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{where}={raw!r}: expected {'an integer' if kind == 'int' else 'a number'}") from None
    return raw
