"""h2load (nghttp2's C HTTP/2 load generator) as a gRPC client, for compare_frontends.py.

    ensure_h2load()                                   # apt-get install nghttp2-client when missing
    write_body(path, request_bytes, k)                # k gRPC-framed messages: one h2load "request"
    run = H2load(port, METHOD, body, clients=1, streams=64).run(seconds=5, rps=None, log_file=None)
    run.rps, run.done, run.data_bytes, run.client_cpu_s, run.problems(answer_len, k)

A gRPC call over HTTP/2 is a POST with `content-type: application/grpc` and `te: trailers` whose
body is length-prefixed messages (1 byte compressed flag 0, 4-byte big-endian length, message).
h2load sends the same body on every stream and sees only the HTTP status (200 for every gRPC call,
failed or not), so a run is checked by its DATA bytes: an OK unary answer carries one framed
response message, a refused call (trailers only) carries none. compare_frontends.py measures each
answer's length once with a real gRPC client and `problems` compares.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field

UNARY = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def ensure_h2load() -> str:
    """The path of h2load; installs Debian's nghttp2-client (as root, or through sudo) if missing."""
    found = shutil.which("h2load")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("h2load missing: apt-get install -y nghttp2-client", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(sudo + ["apt-get", "install", "-y", "nghttp2-client"], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:  # an old package list: update once, then try again
        subprocess.run(sudo + ["apt-get", "update"], capture_output=True, env=env)
        done = subprocess.run(sudo + ["apt-get", "install", "-y", "nghttp2-client"], capture_output=True, text=True,
                              env=env)
    found = shutil.which("h2load")
    if not found:
        raise RuntimeError(f"could not install nghttp2-client (h2load): {done.stderr[-1000:]}")
    return found


def h2load_version() -> str:
    out = subprocess.run([ensure_h2load(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def grpc_frame(message: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(message)) + message


def write_body(path: str, message: bytes, k: int = 1) -> str:
    with open(path, "wb") as f:
        f.write(grpc_frame(message) * k)
    return path


@dataclass
class Run:
    """One h2load run, parsed from its summary (counts are h2load streams, not gRPC messages)."""
    seconds: float
    rps: float = 0.0          # streams done per second of the run
    started: int = 0
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    status: dict = field(default_factory=dict)  # "2xx" -> count ...
    data_bytes: int = 0       # DATA frame payload received
    mean_ms: float = 0.0      # h2load's own mean time per stream
    client_cpu_s: float = 0.0  # h2load's user + system time (wait4)
    wall_s: float = 0.0       # h2load's process lifetime

    def problems(self, answer_len: int, k: int = 1) -> list:
        """Why this run's answers are not all gRPC OK answers of `answer_len` framed bytes each
        (k per stream); empty when they are. Streams still open when h2load stopped may have sent
        part of their answers, hence the range."""
        out = []
        if self.failed or self.errored or self.timeout:
            out.append(f"h2load failed={self.failed} errored={self.errored} timeout={self.timeout}")
        bad = {c: n for c, n in self.status.items() if c != "2xx" and n}
        if bad:
            out.append(f"HTTP status codes {bad}")
        if self.done == 0:
            out.append("no stream completed")
        low, high = self.done * k * answer_len, self.started * k * answer_len
        if not low * 0.995 <= self.data_bytes <= high * 1.005 + answer_len:
            out.append(f"{self.data_bytes} answer bytes for {self.done}-{self.started} streams x {k} answers of "
                       f"{answer_len} bytes: about {self.data_bytes / max(answer_len, 1):.0f} answers, so "
                       f"some calls were not answered OK")
        return out


_NUM = r"([\d.]+)"


def parse(text: str, seconds: float) -> Run:
    run = Run(seconds=seconds)
    m = re.search(r"finished in [\d.]+m?s, " + _NUM + r" req/s", text)
    if not m:
        raise RuntimeError("h2load printed no summary:\n" + text[-2000:])
    run.rps = float(m.group(1))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    run.started, run.done, run.succeeded, run.failed, run.errored, run.timeout = (int(g) for g in m.groups()[1:])
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    run.status = dict(zip(("2xx", "3xx", "4xx", "5xx"), (int(g) for g in m.groups())))
    m = re.search(r"traffic: .*?, [\d.]+[KMG]?B \((\d+)\) data", text)
    run.data_bytes = int(m.group(1))
    m = re.search(r"time for request:\s+\S+\s+\S+\s+" + _NUM + r"(us|ms|s)", text)
    if m:
        run.mean_ms = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    return run


@dataclass
class H2load:
    """h2load against one gRPC method on 127.0.0.1:port: `clients` connections (one h2load thread),
    `streams` streams in flight on each, every stream sending `body` (a file)."""
    port: int
    method: str
    body: str
    clients: int = 1
    streams: int = 64

    def command(self, seconds: float, rps: float = None, log_file: str = None) -> list:
        cmd = [ensure_h2load(), "-c", str(self.clients), "-m", str(self.streams), "-t", "1",
               "-D", f"{max(int(round(seconds * 1000)), 1)}ms", "-d", self.body,
               "-H", "content-type: application/grpc", "-H", "te: trailers"]
        if rps is not None:
            cmd += ["--rps", str(max(int(round(rps)), 1))]  # per client
        if log_file:
            cmd += ["--log-file", log_file]
        return cmd + [f"http://127.0.0.1:{self.port}{self.method}"]

    def run(self, seconds: float, rps: float = None, log_file: str = None, on_start=None) -> Run:
        """Runs h2load for `seconds` (timed from its first stream: no warm-up inside the run, whose
        byte counts would include the warm-up's); `on_start()` is called right after it is spawned
        and its result kept in `run.started_with`."""
        out_path = f"{self.body}.{os.getpid()}.out"
        with open(out_path, "w+") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(self.command(seconds, rps, log_file), stdout=out, stderr=subprocess.STDOUT)
            started_with = on_start() if on_start else None
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            out.seek(0)
            text = out.read()
        os.unlink(out_path)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load exited with {proc.returncode}:\n{text[-2000:]}")
        run = parse(text, seconds)
        run.client_cpu_s = usage.ru_utime + usage.ru_stime
        run.wall_s = wall
        run.started_with = started_with
        return run


def latency_ms(log_file: str, skip_s: float = 0.2) -> dict:
    """p50/p90/p99/max of h2load's --log-file (start us since epoch, HTTP status, us to the end of
    the answer), leaving out streams started in the first `skip_s` (connection set-up)."""
    import numpy as np

    rows = np.loadtxt(log_file, ndmin=2)
    if rows.size == 0:
        return {"n": 0}
    rows = rows[rows[:, 0] >= rows[:, 0].min() + skip_s * 1e6]
    ok = rows[rows[:, 1] == 200][:, 2] / 1e3
    p50, p90, p99 = np.percentile(ok, [50, 90, 99]) if len(ok) else (float("nan"),) * 3
    return {"n": int(len(ok)), "not_200": int(len(rows) - len(ok)), "p50": float(p50), "p90": float(p90),
            "p99": float(p99), "max": float(ok.max()) if len(ok) else float("nan"),
            "achieved_rps": float(len(rows) / max((rows[:, 0].max() - rows[:, 0].min()) / 1e6, 1e-9))}
