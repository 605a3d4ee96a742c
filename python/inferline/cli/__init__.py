"""The `inferline` command: every subcommand's parsing lives in this package (models.py, serve.py,
rollouts.py for `canary` and `shadow`, stats.py, report.py, ...)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import InferlineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferline", description="Real-time model serving.")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="push concurrent requests through the engine; print throughput and latency")
    demo.add_argument("--concurrency", type=int, default=256, help="concurrent asyncio callers (default 256)")
    demo.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3)")
    from .bench import add_parser as add_bench
    from .logs import add_parser as add_logs
    from .models import add_parser as add_models
    from .ray import add_parser as add_ray
    from .rollouts import add_parser as add_rollouts
    from .report import add_parser as add_report
    from .serve import add_parser as add_serve
    from .stats import add_parser as add_stats
    add_bench(sub)
    add_logs(sub)
    add_models(sub)
    add_ray(sub)
    add_rollouts(sub)
    add_report(sub)
    add_serve(sub)
    add_stats(sub)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status = _run(args)
        sys.stdout.flush()  # inside the try: a closed pipe fails here, not at interpreter exit
        return status
    except InferlineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our output went away (`inferline models show m | head`): normal in a pipe.
        # Point stdout at /dev/null so that the interpreter's last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose pipe closed


def _run(args) -> int:
    if hasattr(args, "run"):  # commands that name their runner (stats, report)
        return args.run(args)
    if args.command == "version":
        from .. import __version__
        print(__version__)
        return 0
    if args.command == "serve":
        from .serve import run as run_serve
        return run_serve(args)
    if args.command == "bench":
        from .bench import run as run_bench
        return run_bench(args)
    if args.command == "models":
        from .models import run
        return run(args)
    if args.command == "logs":
        from .logs import run as run_logs
        return run_logs(args)
    if args.command in ("canary", "shadow"):
        from .rollouts import run as run_rollouts
        return run_rollouts(args)
    from ..demo import run_demo  # "demo"
    run_demo(concurrency=args.concurrency, seconds=args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
