"""`inferline logs sweep`: the inference log's retention, by hand (servers also sweep hourly)."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("logs", help="inference logs: retention", description="The inference log that "
                       "`inferline serve --inference-log` writes (Parquet, partitioned by date).")
    logs = p.add_subparsers(dest="logs_command", required=True)
    s = logs.add_parser("sweep", help="remove date partitions past retention (never today's)",
                        description="Removes ROOT/inference/date=D partitions with D older than --days days and "
                                    "ROOT/hardware/date=D ones older than --hardware-days (UTC), one partition at "
                                    "a time; today's partition is never removed.")
    s.add_argument("--root", default=None, metavar="DIR_OR_URL",
                   help="the inference log's root: a directory or fsspec URL (default ~/.inferline/logs)")
    s.add_argument("--days", type=int, default=14, help="days of inference records to keep besides today's "
                                                        "(default 14)")
    s.add_argument("--hardware-days", type=int, default=30, help="days of hardware samples to keep besides "
                                                                 "today's (default 30)")
    s.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")


def run(args) -> int:
    from ..inferlog import LogStore, Retention, default_root, sweep

    root = args.root or default_root()
    removed = sweep(LogStore(root), Retention(args.days, args.hardware_days), dry_run=args.dry_run)
    for path in removed:
        print(("would remove " if args.dry_run else "removed ") + path)
    print(f"{len(removed)} partition(s) {'past retention' if args.dry_run else 'removed'} under {root}")
    return 0
