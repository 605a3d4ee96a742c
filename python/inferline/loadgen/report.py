"""The report of a run: the client processes' results merged, as a dict (the `--json` output),
as text, and as a plot.

Latency is in milliseconds in the report (microseconds in the histograms). Throughput counts the
requests answered OK whose scheduled (open loop) or send (closed loop) time fell in the measured
window, over the window's length.
"""

from __future__ import annotations

from typing import List, Optional

from .histogram import Histogram

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
CLIENT_LIMIT_SHARE = 0.5
"""Client CPU per request above this share of the server's: the report warns that the client may limit."""


def _ms(h: Histogram) -> dict:
    out = {name: _round(h.quantile(q)) for name, q in QUANTILES}
    out["max"] = _round(h.max if h.count else None)
    out["mean"] = _round(h.mean)
    return out


def _round(us: Optional[float]) -> Optional[float]:
    return None if us is None else round(us / 1000.0, 4)


def merge_results(config, results: List[dict], server_cpu_s: Optional[float]) -> dict:
    latency, lag, series, errors = Histogram(), Histogram(), {}, {}
    ok = fallback = sent = answered = 0
    cpu = 0.0
    for r in results:
        latency.merge(Histogram.from_dict(r["latency"]))
        lag.merge(Histogram.from_dict(r["lag"]))
        for k, h in r["series"].items():
            series.setdefault(int(k), Histogram()).merge(Histogram.from_dict(h))
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
        ok += r["ok"]
        fallback += r["fallback"]
        sent += r["sent_total"]
        answered += r["answered_total"]
        cpu += r["cpu_s"]
    requests = ok + sum(errors.values())
    t = config.target
    report = {
        "url": t.url, "protocol": t.protocol, "model": t.model, "version": t.version or None,
        "mode": "closed" if config.rate is None else ("poisson" if config.poisson else "open"),
        "concurrency": config.concurrency if config.rate is None else None,
        "offered_rps": config.rate, "warmup_s": config.warmup_s, "duration_s": config.duration_s,
        "batch": config.batch,
        "requests": requests, "ok": ok, "errors": dict(sorted(errors.items())),
        "throughput_rps": round(ok / config.duration_s, 2),
        "request_rate_rps": round(requests / config.duration_s, 2),
        "latency_ms": _ms(latency),
        "sender_lag_ms": _ms(lag) if config.rate is not None else None,
        "fallback_share": round(fallback / ok, 6) if ok else 0.0,
        "client_cpu_us_per_request": round(cpu / requests * 1e6, 1) if requests else None,
        "server_cpu_us_per_request": (round(server_cpu_s / requests * 1e6, 1)
                                      if server_cpu_s is not None and requests else None),
        "sent_total": sent, "answered_total": answered,
        "latency_over_time": [{"t_s": round(k * 1.0, 3), "count": h.count,
                               "p50_ms": _round(h.quantile(0.5)), "p99_ms": _round(h.quantile(0.99))}
                              for k, h in sorted(series.items())],
        "histogram": latency.to_dict(),
    }
    c, s = report["client_cpu_us_per_request"], report["server_cpu_us_per_request"]
    report["client_may_limit"] = bool(c and s and c > CLIENT_LIMIT_SHARE * s)
    return report


def format_text(r: dict) -> str:
    load = f"concurrency {r['concurrency']}" if r["mode"] == "closed" else \
        f"{r['mode']} loop at {r['offered_rps']:g} req/s offered"
    lat = r["latency_ms"]
    lines = [f"{r['protocol']} {r['url']} model {r['model']}: {load}, {r.get('procs', '?')} client process(es) "
             f"({r.get('transport', 'python')} transport), "
             f"{r['duration_s']:g} s after {r['warmup_s']:g} s warm-up",
             f"  throughput   {r['throughput_rps']:.1f} req/s OK ({r['requests']} requests, {r['ok']} OK)",
             "  latency ms   " + "  ".join(f"{k} {_fmt(lat[k])}" for k in ("p50", "p90", "p99", "p99.9", "max"))]
    if r["sender_lag_ms"]:
        lag = r["sender_lag_ms"]
        lines.append("  sender lag   " + "  ".join(f"{k} {_fmt(lag[k])}" for k in ("p50", "p99", "max")) + " ms")
    errors = ", ".join(f"{k}: {n}" for k, n in r["errors"].items()) or "none"
    lines.append(f"  errors       {errors}")
    lines.append(f"  fallback     {r['fallback_share'] * 100:.2f}% of OK answers")
    cpu = f"  CPU/request  client {_fmt(r['client_cpu_us_per_request'])} us"
    if r["server_cpu_us_per_request"] is not None:
        cpu += f", server {_fmt(r['server_cpu_us_per_request'])} us"
    lines.append(cpu)
    if r["client_may_limit"]:
        lines.append(f"  warning: the client spends more than {CLIENT_LIMIT_SHARE:g}x the server's CPU per request; "
                     f"it may be what limits (more --procs, or a client machine of its own)")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"


def format_sweep(steps: List[dict], best: Optional[dict], target_ms: float) -> str:
    lines = [f"{'offered':>10} {'achieved':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}  meets p99 <= {target_ms:g} ms"]
    for s in steps:
        lat = s["latency_ms"]
        lines.append(f"{s['offered_rps']:>10.1f} {s['throughput_rps']:>10.1f} {_fmt(lat['p50']):>9} "
                     f"{_fmt(lat['p99']):>9} {sum(s['errors'].values()):>7}  {'yes' if s['meets'] else 'no'}")
    lines.append(f"highest rate meeting the target: {best['offered_rps']:.1f} req/s" if best
                 else "no rate met the target")
    return "\n".join(lines)


def plot(path: str, reports: List[dict], target_ms: Optional[float] = None) -> None:
    """One run: latency over time. A sweep: latency percentiles against the offered rate."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from ..errors import InferlineError
        raise InferlineError("--plot needs matplotlib (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(reports) > 1:
        steps = sorted(reports, key=lambda r: r["offered_rps"])
        x = [r["offered_rps"] for r in steps]
        for name in ("p50", "p90", "p99", "p99.9"):
            ax.plot(x, [r["latency_ms"][name] for r in steps], marker="o", label=name)
        if target_ms:
            ax.axhline(target_ms, color="grey", linestyle="--", label=f"p99 target {target_ms:g} ms")
        ax.set_xlabel("offered rate (req/s)")
    else:
        series = reports[0]["latency_over_time"]
        x = [s["t_s"] for s in series]
        ax.plot(x, [s["p50_ms"] for s in series], label="p50")
        ax.plot(x, [s["p99_ms"] for s in series], label="p99")
        ax.set_xlabel("time into the measured window (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    r = reports[0]
    ax.set_title(f"{r['model']} over {r['protocol']} ({r['url']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
