"""`inferline report`: an HTML page with plots of a past time range, from Prometheus and the
inference logs.

    inferline report --since 1d --out report.html                            # the logs alone
    inferline report --since 6h --out report.html --prometheus http://127.0.0.1:9090

The report is inferline.report.build; this module only parses.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="HTML report with plots: latency, throughput, batch fill, fallbacks, canary",
                       description="Writes one self-contained HTML page over the last --since: latency percentiles, "
                                   "throughput, batch fill, fallback and error rates from a Prometheus server's "
                                   "recording rules (deploy/prometheus/) when --prometheus is given, else from the "
                                   "inference logs' sampled requests; canary vs stable agreement and accuracy from "
                                   "the inference logs.")
    p.add_argument("--since", default="1d", help="how far back: 30m, 6h, 1d, 2w (default 1d)")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--logs", metavar="ROOT", help="the inference log's directory (default ~/.inferline/logs, "
                                                  "where inferline serve writes it)")
    p.add_argument("--prometheus", metavar="URL", help="a Prometheus server with inferline's recording rules, "
                                                       "e.g. http://127.0.0.1:9090")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..report.build import build_report, parse_since
    found = build_report(parse_since(args.since), args.out, logs_root=args.logs, prometheus=args.prometheus)
    drawn = [title for title, ok in found["sections"].items() if ok]
    print(f"wrote {args.out}: {len(drawn)} of {len(found['sections'])} plots drawn; "
          f"models in the logs: {', '.join(found['models']) or 'none'}")
    return 0
