"""Server settings: typed, one docstring per field, overridable from INFERLINE_* environment variables."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional

ENV_PREFIX = "INFERLINE_"


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    """Address to bind; 127.0.0.1 unless told otherwise."""
    http_port: int = 8000
    """REST (KServe v2 HTTP/JSON) port."""
    grpc_port: int = 8001
    """gRPC (inference.GRPCInferenceService) port."""
    metrics_port: int = 8002
    """Reserved for the Prometheus endpoint (observability issue); not bound yet."""
    workers: int = 1
    """Server processes sharing the ports (SO_REUSEPORT), each with its own engine."""
    repository: Optional[str] = None
    """Registry location (see `inferline models`); None = INFERLINE_REPOSITORY or the default."""
    poll_interval_s: float = 2.0
    """How often the registry is checked for new live/canary versions."""
    admin_token: Optional[str] = None
    """Bearer token required by state-changing endpoints (load, unload); None = not required."""
    tls_cert: Optional[str] = None
    """PEM certificate file; with tls_key, serves gRPC and HTTP over TLS."""
    tls_key: Optional[str] = None
    """PEM private key file."""
    max_message_bytes: int = 64 * 1024 * 1024
    """Largest request accepted (gRPC message / HTTP body); larger ones are refused cleanly."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM/SIGINT: how long in-flight requests may take to finish."""

    @classmethod
    def from_env(cls, **overrides) -> "ServerSettings":
        """Defaults, then INFERLINE_<FIELD> environment variables, then explicit overrides (not None)."""
        values = {}
        for f in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


def _parse(f, raw: str):
    kind = str(f.type)
    if "int" in kind and "Optional" not in kind:
        return int(raw)
    if "float" in kind:
        return float(raw)
    return raw
