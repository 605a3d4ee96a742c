"""The `inferline` command."""

from __future__ import annotations

import argparse
import sys

from .errors import InferlineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferline", description="Real-time model serving.")
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="push concurrent requests through the engine; print throughput and latency")
    demo.add_argument("--concurrency", type=int, default=256, help="concurrent asyncio callers (default 256)")
    demo.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3)")
    from .registry.cli import add_parser as add_models
    from .server.app import add_parser as add_serve
    add_models(sub)
    add_serve(sub)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            from . import __version__
            print(__version__)
            return 0
        if args.command == "serve":
            from .server.app import run as run_serve
            return run_serve(args)
        if args.command == "models":
            from .registry.cli import run
            return run(args)
        if args.command in (None, "demo"):
            from .demo import run_demo
            run_demo(concurrency=getattr(args, "concurrency", 256), seconds=getattr(args, "seconds", 3.0))
            return 0
    except InferlineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
