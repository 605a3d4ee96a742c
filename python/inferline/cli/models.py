"""`inferline models ...`: the registry from the command line."""

from __future__ import annotations

import argparse
import json
import time

from ..models.service import open_registry, push
from ..registry import parse_ref


def add_parser(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repository", default=argparse.SUPPRESS, metavar="URL_OR_DIR",
                        help="repository directory or fsspec URL (env INFERLINE_REPOSITORY; "
                             "default ~/.inferline/repository, seeded with the demo models)")
    models = sub.add_parser("models", parents=[common], help="the model registry")
    cmds = models.add_subparsers(dest="models_command", required=True)

    p = cmds.add_parser("push", parents=[common], help="validate, load once, store immutably; prints NAME:VERSION")
    p.add_argument("path", help="package directory or a bare .onnx file")
    p.add_argument("--name", help="model name (default: from the config, or the file name)")
    p.add_argument("--fallback", metavar="NAME[:VERSION]", help="fallback model (overrides the package's)")
    p.add_argument("--live", action="store_true", help="make this version live")
    p = cmds.add_parser("list", parents=[common], help="versions of every model (or one)")
    p.add_argument("name", nargs="?")
    p = cmds.add_parser("show", parents=[common], help="everything recorded about a version (default: live)")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p = cmds.add_parser("promote", parents=[common], help="make a version live")
    p.add_argument("ref", metavar="NAME:VERSION")
    p = cmds.add_parser("rollback", parents=[common], help="live goes back to the previous live version")
    p.add_argument("name")
    p = cmds.add_parser("set-fallback", parents=[common], help="set or clear a version's fallback")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", metavar="NAME[:VERSION]")
    group.add_argument("--none", action="store_true", help="clear the fallback")
    cmds.add_parser("gc", parents=[common], help="apply retention and remove orphaned artifacts")


def run(args) -> int:
    registry = open_registry(getattr(args, "repository", None))
    try:
        return _COMMANDS[args.models_command](registry, args)
    finally:
        registry.close()


def _push(registry, args) -> int:
    record = push(registry, args.path, name=args.name, fallback=args.fallback, live=True if args.live else None)
    print(record.ref)
    return 0


def _list(registry, args) -> int:
    records = registry.list(args.name)
    print(f"{'MODEL':<24} {'VERSION':>7}  {'STATE':<8} {'LIVE':<4}  {'FALLBACK':<20} {'CREATED':<19}  SHA256")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        print(f"{r.name:<24} {r.version:>7}  {r.state:<8} {'*' if r.is_live else '':<4}  "
              f"{r.fallback_id or '-':<20} {created:<19}  {r.sha256[:12]}")
    return 0


def _show(registry, args) -> int:
    name, version = parse_ref(args.ref, "NAME[:VERSION]")
    r = registry.get(name, version)
    out = {
        "name": r.name, "version": r.version, "state": r.state, "is_live": r.is_live, "model_uri": r.model_uri,
        "sha256": r.sha256, "fallback_id": r.fallback_id, "created_at": r.created_at,
        "model_load_time_s": r.model_load_time_s, "fingerprint": r.fingerprint, "failure": r.failure,
        "runtime_env": r.runtime_env, "labels": r.labels, "config": r.config,
    }
    print(json.dumps(out, indent=2, sort_keys=False))
    return 0


def _promote(registry, args) -> int:
    name, version = parse_ref(args.ref, "NAME:VERSION")
    if version is None:
        from ..errors import InvalidArgument
        raise InvalidArgument("promote: give NAME:VERSION")
    print(registry.promote(name, version).ref)
    return 0


def _rollback(registry, args) -> int:
    print(registry.rollback(args.name).ref)
    return 0


def _set_fallback(registry, args) -> int:
    name, version = parse_ref(args.ref, "NAME[:VERSION]")
    if version is None:
        version = registry.get(name).version
    record = registry.set_fallback(name, version, None if args.none else args.to)
    print(f"{record.ref} -> {record.fallback_id or 'none'}")
    return 0


def _gc(registry, args) -> int:
    report = registry.gc()
    print(f"removed {len(report.versions)} versions, {len(report.packages)} packages, {len(report.temp)} temp files")
    return 0


_COMMANDS = {"push": _push, "list": _list, "show": _show, "promote": _promote, "rollback": _rollback,
             "set-fallback": _set_fallback, "gc": _gc}
