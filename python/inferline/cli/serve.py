"""`inferline serve`: its flags, one per ``ServerSettings`` field, named and documented by the field."""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import InvalidArgument
from ..server.settings import ServerSettings


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the registry's live models over gRPC and REST (KServe v2)",
                       description="Serves every live (and canary) version in the registry over gRPC and REST "
                                   "(KServe v2 / Open Inference Protocol). Each flag can also be set with the "
                                   "INFERLINE_<FLAG> environment variable shown in its help.")
    for f in dataclasses.fields(ServerSettings):
        flag = ServerSettings.flag(f)
        kind = _parsed(f.metadata["parse"]) if f.metadata.get("parse") else _number(str(f.type))
        p.add_argument("--" + flag, dest=f.name, metavar=f.metadata.get("metavar"), type=kind,
                       help=f"{f.metadata['help']} [env {ServerSettings.env_name(f)}]")


def run(args) -> int:
    from ..server.parent import die_with_parent_from_env
    die_with_parent_from_env()
    from ..server.app import serve
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings)}
    return serve(ServerSettings.from_env(**overrides))


def _number(kind: str):
    """An argparse type for int/float settings whose error names what was expected; None for strings."""
    if kind not in ("int", "float"):
        return None
    convert = int if kind == "int" else float

    def parse(raw: str):
        try:
            return convert(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind == 'int' else 'a number'}, "
                                             f"got {raw!r}") from None

    parse.__name__ = kind
    return parse


def _parsed(convert):
    """An argparse type for a setting with its own parser (sizes): its InvalidArgument as the error."""
    def parse(raw: str):
        try:
            return convert(raw)
        except InvalidArgument as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = "size"
    return parse
