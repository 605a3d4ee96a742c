"""Issue 16's side-by-side benchmark: inferline's native C++ gRPC frontend next to a no-op C++ gRPC
server, inferline's Python frontend and KServe, on the same light model, driven by a C client
(h2load), one server at a time, in one run. One table of absolute numbers and the issue's ratios.

    python bench/native/compare_frontends.py                      # about 3 min (--seconds 10)
    python bench/native/compare_frontends.py --seconds 5 --only noop,python --out /tmp/frontends.json

Request: digits-mlp's first golden row as a ModelInferRequest (64 FP32 pixels in
raw_input_contents, 291 bytes), gRPC-framed. Per server (started fresh on free ports for its turn,
checked with a real gRPC client, then alone with h2load):

- unary saturation: h2load -c C -m --streams (64) on ModelInfer for --seconds after a --warmup run,
  C from --clients for the C++ servers (noop, native; the best is kept) and 1 for the Python ones;
  server CPU per request = utime+stime of the server's process tree (/proc) over the h2load run
  divided by the answers received; h2load's own CPU per request beside it;
- latency at 80% of that saturation: h2load --rps (per connection, same C and -m), p50/p99 of
  h2load's per-stream log (the first 0.2 s left out). h2load times each stream from when it is
  submitted: a request waiting for a free stream slot (all -m in flight) is not timed while it
  waits, so this is open loop only while fewer than -m are in flight (the table's achieved rate
  tells when not);
- streaming (not KServe): ModelStreamInfer, each h2load stream carrying --stream-k (64) requests
  in one body, -m --stream-streams (8): requests/s = K x streams/s.

Every run is checked: no HTTP error, no failed stream, and the DATA bytes received equal the OK
answers' (a refused or failed gRPC call sends none, or other bytes), measured once per server with
grpcio. Ratios: native/noop, native/python, native/kserve, stream/unary; targets per issue 16.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import frontends_lib as fl  # noqa: E402
import h2load_lib as h2  # noqa: E402

lib = fl.lib


def timed(h: h2.H2load, seconds: float, pid: int, answer_len: int, k: int = 1, rps: float = None,
          log_file: str = None) -> dict:
    """One h2load run with the server's CPU read when h2load starts and after it exits."""
    run = h.run(seconds, rps=rps, log_file=log_file, on_start=lambda: lib_cpu(pid))
    cpu_s = lib_cpu(pid) - run.started_with
    answers = run.data_bytes // answer_len  # OK answers received (partial streams included)
    return {"rps": run.rps * k, "clients": h.clients, "streams": h.streams, "k": k, "answers": answers,
            "server_cpu_us": cpu_s / max(answers, 1) * 1e6, "client_cpu_us": run.client_cpu_s / max(answers, 1) * 1e6,
            "h2load_mean_ms": run.mean_ms, "problems": run.problems(answer_len, k),
            "h2load": {"done": run.done, "started": run.started, "status": run.status, "data_bytes": run.data_bytes}}


def lib_cpu(pid: int) -> float:
    from inferline.loadgen.procstat import process_cpu_s

    return process_cpu_s(pid)


def saturation(server, args, bodies, answer_len) -> dict:
    counts = args.clients if server.name in ("noop", "native") else [1]
    best = None
    for c in counts:
        h = h2.H2load(server.grpc_port, h2.UNARY, bodies["unary"], clients=c, streams=args.streams)
        h.run(args.warmup)
        row = timed(h, args.seconds, server.pid, answer_len)
        print(f"  {server.name} unary -c {c} -m {args.streams}: {row['rps']:.0f} req/s, server "
              f"{row['server_cpu_us']:.1f} us/req, h2load {row['client_cpu_us']:.1f} us/req"
              + (f"  PROBLEMS {row['problems']}" if row["problems"] else ""), flush=True)
        if best is None or row["rps"] > best["rps"]:
            best = row
    return best


def at_rate(server, args, bodies, answer_len, sat: dict, workdir: str) -> dict:
    rate = args.rate_fraction * sat["rps"]
    c = sat["clients"]
    h = h2.H2load(server.grpc_port, h2.UNARY, bodies["unary"], clients=c, streams=args.streams)
    log = os.path.join(workdir, f"{server.name}-rate.tsv")
    row = timed(h, args.seconds, server.pid, answer_len, rps=rate / c, log_file=log)
    row.update(offered_rps=rate, latency_ms=h2.latency_ms(log))
    lat = row["latency_ms"]
    print(f"  {server.name} unary --rps {rate / c:.0f} x {c}: achieved {lat.get('achieved_rps', 0):.0f} req/s, "
          f"p50 {lat.get('p50', float('nan')):.2f} ms, p99 {lat.get('p99', float('nan')):.2f} ms, server "
          f"{row['server_cpu_us']:.1f} us/req" + (f"  PROBLEMS {row['problems']}" if row["problems"] else ""),
          flush=True)
    return row


def streaming(server, args, bodies, answer_len) -> dict:
    h = h2.H2load(server.grpc_port, h2.STREAM, bodies["stream"], clients=1, streams=args.stream_streams)
    h.run(min(args.warmup, 1.0))
    row = timed(h, args.seconds, server.pid, answer_len, k=args.stream_k)
    print(f"  {server.name} stream K={args.stream_k} -m {args.stream_streams}: {row['rps']:.0f} req/s, server "
          f"{row['server_cpu_us']:.1f} us/req" + (f"  PROBLEMS {row['problems']}" if row["problems"] else ""),
          flush=True)
    return row


def run_turn(name, args, ctx) -> dict:
    load_before = os.getloadavg()
    server = fl.start(name, ctx["workdir"], ctx["model_path"], ctx["pythons"], ctx["noop_binary"], ctx["flag"])
    try:
        payloads, logits = ctx["ref"]
        fl.wait_ready(server, payloads, logits)
        unary_len = fl.check_unary(server, ctx["payload"], logits[0])
        row = {"available": True, "pid": server.pid, "answer_bytes": unary_len, "loadavg_before": load_before}
        time.sleep(0.5)  # start-up work settles
        row["unary"] = saturation(server, args, ctx["bodies"], unary_len)
        row["rate"] = at_rate(server, args, ctx["bodies"], unary_len, row["unary"], ctx["workdir"])
        if name != "kserve" and not args.no_stream:
            stream_len = fl.check_stream(server, ctx["payload"], args.stream_k, logits[0])
            row["stream_answer_bytes"] = stream_len
            row["stream"] = streaming(server, args, ctx["bodies"], stream_len)
    finally:
        server.stop()
    return row


# ---- the report ------------------------------------------------------------------------------
def _f(value, fmt="{:.0f}"):
    return "-" if value is None else fmt.format(value)


def table(results: dict) -> list:
    head = (f"{'server':<8} {'unary req/s':>11} {'c':>2} {'cpu us/req':>10} {'h2load us/req':>13}  "
            f"{'@80%: req/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7}  {'stream req/s':>12} "
            f"{'cpu us/req':>10} {'stream/unary':>12}  ok")
    lines = [head]
    for name, r in results.items():
        if not r.get("available"):
            lines.append(f"{name:<8} not available: {r.get('reason', '')}")
            continue
        u, rt, s = r["unary"], r["rate"], r.get("stream")
        lat = dict({"achieved_rps": 0, "p50": float("nan"), "p99": float("nan")}, **rt["latency_ms"])
        ok = not (u["problems"] or rt["problems"] or (s or {}).get("problems"))
        lines.append(
            f"{name:<8} {u['rps']:>11.0f} {u['clients']:>2} {u['server_cpu_us']:>10.1f} {u['client_cpu_us']:>13.1f}  "
            f"{lat['achieved_rps']:>11.0f} {lat['p50']:>7.2f} {lat['p99']:>7.2f} "
            f"{rt['server_cpu_us']:>7.1f}  {_f(s and s['rps']):>12} {_f(s and s['server_cpu_us'], '{:.1f}'):>10} "
            f"{_f(s and s['rps'] / u['rps'], '{:.2f}'):>12}  {'yes' if ok else 'NO (see problems)'}")
    return lines


def _ratio(results, a, b, key="unary"):
    ra, rb = results.get(a) or {}, results.get(b) or {}
    if not (ra.get("available") and rb.get("available")):
        return None, f"{a if not ra.get('available') else b} not measured"
    return ra[key]["rps"] / rb[key]["rps"], ""


def targets(results: dict, subject: str = "native") -> list:
    """(what, value, target text, verdict) per issue-16 target, for `subject` (the native frontend;
    the Python frontend's are printed beside them for reference)."""
    out = []
    for other, at_least in (("noop", 0.5), ("python", 8.0), ("kserve", 10.0)):
        if other == subject:
            continue
        value, why = _ratio(results, subject, other)
        out.append((f"{subject}/{other} unary throughput", value, f">= {at_least}", why, value is not None
                    and value >= at_least))
    r = results.get(subject) or {}
    have = bool(r.get("available"))
    why = "" if have else f"{subject} not measured"
    stream = r.get("stream") if have else None
    value = stream["rps"] / r["unary"]["rps"] if stream else None
    out.append((f"{subject} stream/unary throughput", value, ">= 1.0", why or ("" if stream else "no stream run"),
                value is not None and value >= 1.0))
    value = r["unary"]["server_cpu_us"] if have else None
    out.append((f"{subject} server CPU us/request (unary, saturation)", value, "<= 80", why,
                value is not None and value <= 80))
    value = r["rate"]["latency_ms"].get("p99") if have else None
    out.append((f"{subject} p99 ms at 80% of saturation", value, "<= 5", why, value is not None and value <= 5))
    return out


def target_lines(rows) -> list:
    lines = []
    for what, value, goal, why, ok in rows:
        shown = f"{value:.2f}" if value is not None else "n/a"
        verdict = ("met" if ok else "MISSED") if value is not None else f"n/a: {why}"
        lines.append(f"  {what:<48} {shown:>8}  (target {goal}: {verdict})")
    return lines


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per timed h2load run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each saturation run")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(fl.SERVERS))
    ap.add_argument("--skip-kserve", action="store_true", help="leave KServe out")
    ap.add_argument("--streams", type=int, default=64, help="unary: streams in flight per connection (h2load -m)")
    ap.add_argument("--clients", default="1,2", help="unary: connections to try for the C++ servers (best kept)")
    ap.add_argument("--rate-fraction", type=float, default=0.8, help="latency run: fraction of saturation")
    ap.add_argument("--stream-k", type=int, default=64, help="requests per ModelStreamInfer stream")
    ap.add_argument("--stream-streams", type=int, default=8, help="streams in flight (h2load -m)")
    ap.add_argument("--no-stream", action="store_true", help="skip the streaming runs")
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "inferline-compare"),
                    help="KServe's venv (compare_servers_lib.py's)")
    ap.add_argument("--kserve-python", help="a python with kserve and onnxruntime, instead of the cached venv")
    ap.add_argument("--build-dir", default=os.path.join(fl.ROOT, "build", "bench-native"),
                    help="where the no-op C++ server is built")
    ap.add_argument("--out", metavar="PATH", help="write every measurement and the targets here (JSON)")
    args = ap.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    names = args.only.split(",") if args.only else list(fl.SERVERS)
    unknown = set(names) - set(fl.SERVERS)
    if unknown:
        ap.error(f"unknown servers {sorted(unknown)}; of {', '.join(fl.SERVERS)}")
    args.names = [n for n in names if not (args.skip_kserve and n == "kserve")]
    return args


def setup(args) -> dict:
    from inferline.demo_models import demo_package_path

    h2.ensure_h2load()
    package = demo_package_path(lib.MODEL)
    model_path = os.path.join(package, "model.onnx")
    ctx = {"model_path": model_path, "workdir": tempfile.mkdtemp(prefix="inferline-frontends-"),
           "flag": fl.frontend_flag(), "pythons": {}, "noop_binary": None}
    ctx["native_missing"] = fl.native_missing() if "native" in args.names else ""
    ctx["versions"] = {"h2load": h2.h2load_version(), "grpc++": fl.grpcpp_version(),
                       "inferline": lib.versions(sys.executable, ["inferline", "onnxruntime", "grpcio"])}
    if "kserve" in args.names:
        ctx["pythons"]["kserve"] = args.kserve_python or lib.ensure_venv(args.cache_dir, "kserve")
        ctx["versions"]["kserve"] = lib.versions(ctx["pythons"]["kserve"], lib.VERSIONS["kserve"])
    if "noop" in args.names:
        ctx["noop_binary"] = fl.build_noop(args.build_dir)
    ctx["ref"] = lib.reference(model_path, os.path.join(package, "golden.npz"))
    ctx["payload"] = ctx["ref"][0][0]
    ctx["bodies"] = {"unary": h2.write_body(os.path.join(ctx["workdir"], "unary.bin"), ctx["payload"]),
                     "stream": h2.write_body(os.path.join(ctx["workdir"], "stream.bin"), ctx["payload"], args.stream_k)}
    return ctx


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = setup(args)
    print(f"versions: {json.dumps(ctx['versions'])}; request {len(ctx['payload'])} bytes; "
          f"{os.cpu_count()} CPUs; --frontend flag: {'yes' if ctx['flag'] else 'no'}", flush=True)
    results = {}
    for name in args.names:
        if name == "native" and ctx["native_missing"]:
            results[name] = {"available": False, "reason": ctx["native_missing"]}
            print(f"server=native not available: {ctx['native_missing']}", flush=True)
            continue
        print(f"server={name} (load average {os.getloadavg()[0]:.2f})", flush=True)
        try:
            results[name] = run_turn(name, args, ctx)
        except RuntimeError as e:  # a server that fails its checks or dies: the others still run
            results[name] = {"available": False, "reason": f"failed: {str(e)[:300]}"}
            print(f"server={name} FAILED: {e}", flush=True)
    lines = ["", f"h2load, {os.cpu_count()} CPUs shared by server and client; --seconds {args.seconds}"]
    lines += table(results) + ["", "issue 16 targets (native frontend):"] + target_lines(targets(results))
    if (results.get("python") or {}).get("available"):
        lines += ["for reference, the Python frontend:"] + target_lines(targets(results, "python"))
    print("\n".join(lines), flush=True)
    if args.out:
        rows = {s: [dict(zip(("what", "value", "target", "why", "met"), t)) for t in targets(results, s)]
                for s in ("native", "python")}
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "versions": ctx["versions"],
                       "cpus": os.cpu_count(), "request_bytes": len(ctx["payload"]), "results": results,
                       "targets": rows, "table": lines}, f, indent=1, default=str)
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
