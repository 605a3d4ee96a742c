"""`inferline stats`: a live terminal view of a running server, from its Prometheus /metrics.

    inferline stats                                   # http://127.0.0.1:8002, redrawn every second
    inferline stats --url http://host:8002 --interval 2
    inferline stats --once                            # two scrapes --interval apart, one table, exit

The view is inferline.report.live; this module only parses.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("stats", help="live per model/version view of a running server (rate, p50/p99, errors, ...)",
                       description="Scrapes a server's Prometheus /metrics every --interval and shows, per model "
                                   "and version, over the last interval: requests/s, p50/p99 of the core's latency "
                                   "(from histogram bucket deltas), error ratio, fallback ratio (per model), batch "
                                   "fill; now: requests in flight and rows queued (queued or running) and the canary state.")
    p.add_argument("--url", default="http://127.0.0.1:8002",
                   help="the server's metrics port (default http://127.0.0.1:8002; /metrics is added)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    p.add_argument("--once", action="store_true", help="print one table (over one interval) and exit")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..report.live import run_stats
    return run_stats(args.url, interval_s=args.interval, once=args.once)
