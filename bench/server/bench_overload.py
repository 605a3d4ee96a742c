"""Goodput under overload: inferline next to KServe's model server, same model, same run.

    python bench/server/bench_overload.py [--seconds 8] [--quick] [--model digits-heavy|digits-mlp]
                                          [--kserve-python PATH] [--plot PATH] [--pin]

Both servers answer v2 gRPC ModelInfer for the same model (the same model.onnx, the same
standardisation from model.json; KServe runs it in onnxruntime with one intra-op and one
inter-op thread, as inferline's model.json asks): digits-heavy by default (heavy_model.py:
digits-mlp's signature in front of ~1.5 ms of compute per row that batching cannot share, so
that the model sets the capacity and the clients can offer 10x it), or the demo digits-mlp,
whose capacity is the servers' per-request overhead: the clients here cannot send 10x that. One server runs at a time. For each:
  - capacity: the best of closed loops with 8, 32 and 64 calls in flight per client process, no
    deadline -> answers OK/s;
  - for each multiple m: an open loop at m x capacity, and a closed loop (resent at once after
    any answer or error) with m x capacity x 200 ms calls in flight over all client processes:
    by Little's law the load that offers m x capacity if each call lasts its whole deadline (what
    an overloaded server's refusals come to; `--closed-per-process N`: m x N per process instead,
    whatever the capacity), both with a 200 ms gRPC deadline. Goodput = answers OK within their
    deadline, per second;
  - after the largest multiple (the spike): 3 s open loop at 0.5 x capacity -> p99 (recovery);
  - during every run a prober process calls ServerLive on the gRPC port and GET /v2/health/live
    on the probe port (inferline: its control listener, --metrics-port; KServe: its REST port)
    every 100 ms each (2 s timeout), and the server's RSS (its process tree, /proc VmRSS) is read
    before and at the end of the run.
The server, the client processes and the prober share the machine, as in the issue's setup (a
server on a 2-core machine, two client processes); `--pin` puts the server on CPU 0 and the rest on
the other CPUs, a stricter variant in which every refused call costs the model's own core.
One line per (server, run), then a table and a plot of goodput / capacity vs the multiple.
Ratios are against the capacity measured in the same run: the machine is small and noisy.

KServe needs its own environment (its generated protos clash with tritonclient's in one
process): python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve onnxruntime
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import Counter

import numpy as np

from overload_servers import KSERVE_HINT, golden_payloads, kserve_problem, start_server, stop_server, \
    wait_and_check  # the script's own directory

METHOD = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
CODES = ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED")
"""Always counted (zeros included); any other status code is counted under its own name."""
DEADLINE_S = 0.2
CAPACITY_CONCURRENCY = (8, 32, 64)
"""Closed loops (calls in flight per client process, no deadline) whose best OK/s is the capacity:
the most a server answers, whether or not a larger loop would make it refuse."""
SPIKE_RECOVERY = (0.5, 3.0)  # (multiple of capacity, seconds) after the largest multiple

# ---- pure pieces (tests/python/server/test_overload_bench.py) ---------------------------
def count_outcomes(records) -> dict:
    """Outcomes by gRPC status code name: CODES always present, other codes under their own name."""
    counts = Counter(code for _, _, code, _ in records)
    return {**{code: counts.pop(code, 0) for code in CODES}, **dict(sorted(counts.items()))}


def goodput(records, seconds: float) -> float:
    """Answers OK that arrived within their deadline, per second. A record is (sent_at,
    answered_at, code, deadline_s); deadline None: every OK answer counts."""
    good = sum(1 for sent, answered, code, deadline in records
               if code == "OK" and (deadline is None or answered - sent <= deadline))
    return good / seconds


def summarize(records, seconds: float) -> dict:
    """sent/s, goodput/s, OK/s, p99 of the OK answers (ms), the outcome counts of one run, and
    late_ok: calls that ended OK but that the client timed past their deadline, either because its
    event loop saw the answer late (client lag) or because gRPC's deadline timer fired late."""
    ok_ms = [(answered - sent) * 1e3 for sent, answered, code, _ in records if code == "OK"]
    late = sum(1 for sent, answered, code, deadline in records
               if code == "OK" and deadline is not None and answered - sent > deadline)
    return {"sent_rps": len(records) / seconds, "goodput_rps": goodput(records, seconds),
            "ok_rps": len(ok_ms) / seconds,
            "p99_ms": float(np.percentile(ok_ms, 99)) if ok_ms else float("nan"),
            "codes": count_outcomes(records), "late_ok": late}


def health_summary(latencies_s, timeouts: int, errors: int = 0) -> dict:
    """Max and p99 of the ServerLive latencies (a timed-out probe counts with its elapsed time)."""
    ms = np.asarray(latencies_s, dtype=float) * 1e3
    return {"max_ms": float(ms.max()) if ms.size else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
            "probes": int(ms.size) + errors, "timeouts": timeouts, "errors": errors}


def refusals_text(codes: dict, late_ok: int = 0) -> str:
    """The non-OK outcomes that occurred, e.g. 'UNAVAILABLE=12 DEADLINE_EXCEEDED=3' ('-' if none),
    then the calls that ended OK but too late to count (late_ok)."""
    parts = [f"{code}={n}" for code, n in codes.items() if code != "OK" and n]
    return " ".join(parts + ([f"(OK too late={late_ok})"] if late_ok else [])) or "-"


TABLE = (("server", "server", "{server}"), ("mode", "mode", "{mode}"), ("x", "x", "{multiple:g}"),
         ("offered rps", "offered_rps", "{offered_rps:.0f}"), ("sent rps", "sent_rps", "{sent_rps:.0f}"),
         ("sent/cap", "sent/cap", "{sent_ratio:.2f}"), ("goodput rps", "goodput_rps", "{goodput_rps:.0f}"),
         ("good/cap", "good/cap", "{ratio:.2f}"), ("ok/cap", "ok/cap", "{ok_ratio:.2f}"),
         ("p99 ms", "p99_ms", "{p99_ms:.1f}"), ("health max ms", "health_max_ms", "{health[max_ms]:.1f}"),
         ("health p99 ms", "health_p99_ms", "{health[p99_ms]:.1f}"),
         ("health t/o", "health_timeouts", "{health[timeouts]}"),
         ("probe max ms", "probe_max_ms", "{probe[max_ms]:.1f}"), ("probe t/o", "probe_timeouts", "{probe[timeouts]}"),
         ("client lag ms", "client_lag_p99_ms", "{client_lag_p99_ms:.1f}"),
         ("RSS MB", "rss_mb", "{rss_start:.0f}>{rss_end:.0f}"))
"""(table title, key in the per-run line, format) of each column; the refusals by code follow."""


def closed_concurrency(multiple, capacity, procs, per_process=0) -> int:
    """Calls in flight per client process for the closed loop at `multiple`: `multiple` x
    `per_process` when given, else the load that offers `multiple` x `capacity` (req/s) when every
    call lasts its whole deadline (Little's law: in flight = rate x time), shared by `procs`."""
    if per_process > 0:
        return max(1, int(multiple * per_process))
    return max(1, int(round(multiple * capacity * DEADLINE_S / procs)))


def run_line(row) -> str:
    """The line printed when a run ends: key=value for each column, then the refusals."""
    return " ".join(f"{key}={fmt.format(**row)}" for _, key, fmt in TABLE) + \
        f" refusals={refusals_text(row['codes']).replace(' ', ',')} ok_too_late={row['late_ok']}"


LEGEND = """
x: the multiple of capacity asked for (closed: m x capacity x deadline calls in flight in all, or
m x --closed-per-process per client process);
sent/cap: what the clients did send; goodput: answers OK within {deadline_ms:.0f} ms (client-timed), per
second; good/cap and ok/cap: goodput and every OK answer (however late the client saw it) over
the capacity row of the same server; p99 ms: of the OK answers; health: ServerLive every 100 ms
(t/o: 2 s timeouts); probe: GET /v2/health/live on the probe port (inferline: the control listener;
KServe: its REST port) every 100 ms; client lag ms: p99 of the clients' event-loop lateness; recov-*: 3 s at 0.5 x
capacity right after the spike; (OK too late=N): calls that ended OK, timed past their deadline.
"""


def format_table(rows) -> str:
    """One line per run, columns right-aligned; the last column lists the refusals by status code."""
    cells = [[fmt.format(**row) for _, _, fmt in TABLE] for row in rows]
    widths = [max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _, _) in enumerate(TABLE)]
    lines = ["  ".join(f"{title:>{w}}" for (title, _, _), w in zip(TABLE, widths)) + "  refusals by code"]
    for row, line in zip(rows, cells):
        lines.append("  ".join(f"{c:>{w}}" for c, w in zip(line, widths)) + "  "
                     + refusals_text(row["codes"], row["late_ok"]))
    return "\n".join(lines)


def process_tree_rss_mb(pid: int) -> float:
    """VmRSS of `pid` and all its descendants in MB (/proc; Linux); 0 if it is gone."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total_kb, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total_kb += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total_kb / 1024


# ---- client processes: load and health prober ----------------------------------------------
async def _drive(port, spec, payloads, ready, go):
    """One client process's share of a run: closed loop (rate None) or open loop at spec['rate']/s."""
    import grpc

    ident = lambda b: b  # noqa: E731
    records, cycle = [], itertools.cycle(payloads)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(METHOD, request_serializer=ident, response_deserializer=ident)
        await channel.channel_ready()
        ready.put("client")
        go.wait()
        start = time.perf_counter()
        stop_at = start + spec["seconds"]

        async def one():
            sent = time.perf_counter()
            try:
                await infer(next(cycle), timeout=spec["timeout"])
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            except Exception:  # noqa: BLE001 - counted, never fatal to the run
                code = "other"
            records.append((sent, time.perf_counter(), code, spec["deadline"]))

        async def lag_monitor():  # how late this process's event loop wakes from a 5 ms sleep
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append(time.perf_counter() - t0 - 0.005)

        lags, monitor = [], asyncio.ensure_future(lag_monitor())
        if spec["rate"] is None:
            async def worker():
                while time.perf_counter() < stop_at:
                    await one()
            await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        else:
            await _open_loop(one, spec["rate"], start, stop_at)
        await monitor
    return records, lags


async def _open_loop(one, rate, start, stop_at, burst=8, max_lag_s=0.005):
    """Start one() at `rate` per second. Sends that fall due while this process's event loop runs
    late (its last wake-up more than `max_lag_s` behind) are dropped, and so is a backlog beyond
    `burst`: a sender that cannot keep up must not time its own queue as the server's latency.
    What it did send (sent rps) is then the offered load."""
    due_total, pending, late = 0, set(), 0.0
    while (now := time.perf_counter()) < stop_at:
        due = int((now - start) * rate) + 1 - due_total
        if due > 0:
            due_total += due
            if late <= max_lag_s:
                for _ in range(min(due, burst)):
                    task = asyncio.ensure_future(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
        wait = max(start + due_total / rate - time.perf_counter(), 0.0)
        t0 = time.perf_counter()
        await asyncio.sleep(wait)
        late = time.perf_counter() - t0 - wait
    await asyncio.gather(*pending)


def _drive_native(port, spec, payloads, ready, go):
    """_drive with the native load generator (_core.GrpcLoad: unary calls direct over HTTP/2 where
    built): the same closed loop (each answer or error resends at once) and open loop (latency from
    the scheduled time; never dropped, so the offered load is what is asked), the deadline enforced
    by the client (an OK answer is one that came within it). Returns its result dict."""
    from inferline import _core

    load = _core.GrpcLoad(f"127.0.0.1:{port}", METHOD, list(payloads), channels=4,
                          concurrency=max(1, spec["concurrency"]), rate=spec["rate"] or 0.0, warmup_s=0.0,
                          duration_s=spec["seconds"], timeout_s=spec["timeout"], max_outstanding=1_000_000)
    load.wait_ready(30.0)
    ready.put("client")
    go.wait()
    return load.run(time.monotonic() + 0.05)


def _client_proc(port, spec, payloads, ready, go, results):
    if spec["cpus"]:
        os.sched_setaffinity(0, spec["cpus"])
    if spec["client"] == "native":
        results.put({"native": _drive_native(port, spec, payloads, ready, go)})
    else:
        results.put(asyncio.run(_drive(port, spec, payloads, ready, go)))


async def _probe_every(probe, stop, period_s=0.1):
    """Awaits ``probe()`` every `period_s` until `stop` is set: (latencies, timeouts, errors). A probe
    says "ok", "timeout" (its elapsed time counts as a latency) or "error"."""
    latencies, timeouts, errors = [], 0, 0
    next_at = time.perf_counter()
    while not stop.is_set():
        t0 = time.perf_counter()
        outcome = await probe()
        if outcome != "error":
            latencies.append(time.perf_counter() - t0)
        timeouts += outcome == "timeout"
        errors += outcome == "error"
        next_at = max(next_at + period_s, time.perf_counter())
        await asyncio.sleep(next_at - time.perf_counter())
    return latencies, timeouts, errors


async def _probe(port, ready, stop, timeout_s=2.0):
    """ServerLive on the gRPC port."""
    import grpc

    ident = lambda b: b  # noqa: E731
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        live = channel.unary_unary(LIVE, request_serializer=ident, response_deserializer=ident)
        await channel.channel_ready()
        ready.set()

        async def probe():
            try:
                await live(b"", timeout=timeout_s)
                return "ok"
            except grpc.aio.AioRpcError as e:
                return "timeout" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "error"

        return await _probe_every(probe, stop)


async def _probe_http(port, ready, stop, timeout_s=2.0):
    """GET /v2/health/live on one keep-alive connection (a new one after an error)."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/health/live"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        async with session.get(url) as r:
            await r.read()
        ready.set()

        async def probe():
            try:
                async with session.get(url) as r:
                    await r.read()
                return "ok" if r.status == 200 else "error"
            except asyncio.TimeoutError:
                return "timeout"
            except aiohttp.ClientError:
                return "error"

        return await _probe_every(probe, stop)


async def _probe_both(grpc_port, http_port, ready, stop):
    grpc_ready, http_ready = asyncio.Event(), asyncio.Event()
    probes = asyncio.gather(_probe(grpc_port, grpc_ready, stop), _probe_http(http_port, http_ready, stop))
    await asyncio.wait([asyncio.ensure_future(grpc_ready.wait()), asyncio.ensure_future(http_ready.wait())])
    ready.put("prober")
    return await probes


def _probe_proc(ports, ready, stop, results, cpus):
    if cpus:
        os.sched_setaffinity(0, cpus)
    results.put(asyncio.run(_probe_both(*ports, ready, stop)))


def summarize_native(results, seconds: float) -> dict:
    """summarize for the native client's results (one per client process): every OK answer came
    within the deadline the client enforced (late_ok 0); p99 from the merged histograms."""
    from inferline.loadgen.histogram import Histogram

    latency, lag, codes, sent, ok = Histogram(), Histogram(), Counter(), 0, 0
    for r in results:
        latency.merge(Histogram.from_dict(r["latency"]))
        lag.merge(Histogram.from_dict(r["lag"]))
        codes.update(r["errors"])
        sent += r["sent_total"]
        ok += r["ok"]
    codes["OK"] = ok
    codes = {**dict.fromkeys(CODES, 0), **codes}  # as count_outcomes: the main codes first
    p99, lag99 = latency.quantile(0.99), lag.quantile(0.99)  # lag: the open loop's sends behind schedule
    return {"sent_rps": sent / seconds, "goodput_rps": ok / seconds, "ok_rps": ok / seconds,
            "p99_ms": p99 / 1e3 if p99 is not None else float("nan"), "codes": codes, "late_ok": 0,
            "client_lag_p99_ms": lag99 / 1e3 if lag99 is not None else float("nan")}


def run_load(port, server_pid, payloads, procs, *, seconds, concurrency=0, rate=None, timeout=None,
             deadline=None, cpus=None, probe_port=None, client="python"):
    """One run from `procs` client processes, with the prober and RSS readings around it."""
    ctx = mp.get_context("spawn")
    ready, go, stop, results, health_q = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    spec = {"seconds": seconds, "concurrency": concurrency, "rate": None if rate is None else rate / procs,
            "timeout": timeout, "deadline": deadline, "cpus": cpus, "client": client}
    prober = ctx.Process(target=_probe_proc, args=((port, probe_port), ready, stop, health_q, cpus))
    clients = [ctx.Process(target=_client_proc, args=(port, spec, payloads, ready, go, results))
               for _ in range(procs)]
    rss_start = process_tree_rss_mb(server_pid)
    for p in [prober, *clients]:
        p.start()
    for _ in range(procs + 1):
        ready.get(timeout=120)
    go.set()
    records, lags, native = [], [], []
    for _ in clients:
        got = results.get()
        if isinstance(got, dict):
            native.append(got["native"])
            continue
        records += got[0]
        lags += got[1]
    rss_end = process_tree_rss_mb(server_pid)
    stop.set()
    grpc_probes, http_probes = health_q.get(timeout=60)
    for p in [prober, *clients]:
        p.join()
    summary = summarize_native(native, seconds) if native else summarize(records, seconds)
    return {"health": health_summary(*grpc_probes),
            "probe": health_summary(*http_probes), "rss_start": rss_start, "rss_end": rss_end,
            "client_lag_p99_ms": float(np.percentile(lags, 99) * 1e3) if lags else float("nan"), **summary}


def measure_server(name, port, probe_port, pid, payloads, args):
    """The runs against one server; prints one line per run and returns the rows."""
    rows = []

    def record(mode, multiple, offered, result):
        row = {"server": name, "mode": mode, "multiple": multiple, **result,
               "offered_rps": result["sent_rps"] if offered is None else offered}
        capacity = max((rows[0] if rows else row)["goodput_rps"], 1.0)
        row["ratio"], row["sent_ratio"] = row["goodput_rps"] / capacity, row["sent_rps"] / capacity
        row["ok_ratio"] = row["ok_rps"] / capacity
        rows.append(row)
        print(run_line(row), flush=True)

    load = lambda **kw: run_load(port, pid, payloads, args.procs, cpus=args.client_cpus,  # noqa: E731
                                 probe_port=probe_port, client=args.client, **kw)
    best = None
    for c in CAPACITY_CONCURRENCY:  # the most it answers OK, below the point where it starts refusing
        result = load(seconds=args.capacity_seconds, concurrency=c, timeout=30.0)
        print(f"server={name} capacity probe: {c} calls in flight per client process: "
              f"{result['goodput_rps']:.0f} OK/s, refusals {refusals_text(result['codes'])}", flush=True)
        best = result if best is None or result["goodput_rps"] > best["goodput_rps"] else best
    record("capacity", 1, None, best)
    capacity = max(rows[0]["goodput_rps"], 1.0)
    for m in args.multiples:
        for mode in ("open", "closed"):
            shape = {"rate": m * capacity} if mode == "open" else \
                {"concurrency": closed_concurrency(m, capacity, args.procs, args.closed_per_process)}
            record(mode, m, shape.get("rate"),
                   load(seconds=args.seconds, timeout=DEADLINE_S, deadline=DEADLINE_S, **shape))
            if m == max(args.multiples):  # after the spike. The 10 s gRPC timeout is a guard: its p99 is
                frac, secs = SPIKE_RECOVERY  # not capped at the deadline; goodput still counts 200 ms
                record(f"recov-{mode}", frac, frac * capacity,
                       load(seconds=secs, rate=frac * capacity, timeout=10.0, deadline=DEADLINE_S))
    return rows


def plot(rows, path, model):
    """goodput / capacity vs offered load, one line per server and mode (matplotlib, if importable).
    Open loop: at the rate the clients did send (sent / capacity), which on a small machine falls
    short of the target; closed loop: at its nominal multiple (closed_concurrency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not importable (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for server in dict.fromkeys(r["server"] for r in rows):
        for mode, style in (("open", "-o"), ("closed", "--s")):
            pts = sorted((r["sent_ratio"] if mode == "open" else r["multiple"], r["ratio"])
                         for r in rows if r["server"] == server and r["mode"] == mode)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{server} {mode} loop")
    ax.axhline(1.0, linestyle=":", color="grey", label="capacity")
    ax.set(xscale="log", xlabel="offered load, x capacity of the same run\n(open: sent rate; closed: "
                                "m x capacity x deadline in flight)",
           ylabel="goodput / capacity (OK within 200 ms)", title=f"{model}, gRPC, single-row requests")
    ax.set_xticks([1, 2, 3, 5, 10], ["1", "2", "3", "5", "10"])
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each overload run")
    ap.add_argument("--quick", action="store_true", help="3 s runs, multiples 1 and 10 only")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--closed-per-process", type=int, default=0,
                    help="closed loops: m x N calls in flight per client process (the bench before 2026-11-30 "
                         "used 100); default 0 = m x capacity x deadline in all")
    ap.add_argument("--client", choices=("native", "python"), default=None,
                    help="load generator: native (_core.GrpcLoad, the default where built) or python (grpc.aio)")
    ap.add_argument("--kserve-python", help="python of a virtual environment with kserve and onnxruntime")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=False,
                    help="server on CPU 0, clients and prober on the others: the stricter one-core variant, where "
                         "every refusal takes CPU from the model (default: off, as in the issue's setup: server, "
                         "clients and prober share the machine)")
    ap.add_argument("--plot", default="/tmp/inferline-overload.png", help="where the plot goes")
    ap.add_argument("--server-args", default="", help="more `inferline serve` flags, e.g. '--admission-limit 64'")
    ap.add_argument("--model", choices=("digits-heavy", "digits-mlp"), default="digits-heavy",
                    help="the model both servers run (default digits-heavy: compute sets the capacity)")
    args = ap.parse_args()
    if args.client is None:
        from inferline import _core

        args.client = "python" if getattr(_core, "NATIVE_LOADGEN", "unbuilt") else "native"
    print(f"client: {args.client}", flush=True)
    args.multiples = (1, 10) if args.quick else (1, 2, 3, 10)
    args.seconds = 3.0 if args.quick else args.seconds
    args.capacity_seconds = 3.0 if args.quick else 5.0
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    args.server_cpus, args.client_cpus = ({cpus[0]}, set(cpus[1:])) if pin else (None, None)
    print(f"server CPUs {sorted(args.server_cpus)}, clients and prober CPUs {sorted(args.client_cpus)}" if pin
          else f"no pinning: server, clients and prober share CPUs {cpus}", flush=True)
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push

    workdir = tempfile.mkdtemp(prefix="inferline-overload-")
    registry = open_registry(os.path.join(workdir, "repo"))
    push(registry, demo_package_path("digits-logreg"))
    push(registry, demo_package_path("digits-mlp"))
    package = demo_package_path("digits-mlp")
    if args.model == "digits-heavy":
        from heavy_model import build_package

        package = build_package(workdir, package)
        push(registry, package)
    registry.close()
    payloads, logits = golden_payloads(package, args.model)
    servers = ["inferline"]
    problem = kserve_problem(args.kserve_python)
    if problem:
        print(f"KServe skipped: {problem}. To include it: {KSERVE_HINT}", flush=True)
    else:
        servers.append("kserve")
    rows = []
    for name in servers:
        proc, port, probe_port, log_path = start_server(name, workdir, package, args.kserve_python,
                                                        args.server_cpus, args.server_args.split())
        try:
            wait_and_check(name, port, proc, payloads, logits, log_path)
            rows += measure_server(name, port, probe_port, proc.pid, payloads, args)
        finally:
            stop_server(proc)
    print(LEGEND.format(deadline_ms=DEADLINE_S * 1000))
    print(format_table(rows))
    plot(rows, args.plot, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
