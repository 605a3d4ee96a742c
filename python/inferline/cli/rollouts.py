"""`inferline canary ...` and `inferline shadow ...`: rollouts from the command line.

The work is ``rollout.lifecycle``'s (the REST admin API calls the same functions); this module
parses, opens the registry, calls, and prints. Every server on the registry applies a change at
its next poll.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional

from ..errors import InvalidArgument
from ..models.service import open_registry
from ..registry import parse_ref
from ..rollout import lifecycle

_DEFAULT_STEPS = ",".join(f"{w:g}" for w in lifecycle.DEFAULT_STEPS)


def add_parser(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repository", default=argparse.SUPPRESS, metavar="URL_OR_DIR",
                        help="repository directory or fsspec URL (env INFERLINE_REPOSITORY; "
                             "default ~/.inferline/repository)")
    canary = sub.add_parser("canary", parents=[common], help="roll a version out by increasing weights, judged "
                                                             "against the live version")
    cmds = canary.add_subparsers(dest="canary_command", required=True)
    p = cmds.add_parser("start", parents=[common], help="load-test gate, then the first step; prints the rollout")
    p.add_argument("ref", metavar="NAME:VERSION")
    p.add_argument("--steps", default=_DEFAULT_STEPS, metavar="W1,W2,...",
                   help=f"canary weights in percent, strictly increasing, each in (0, 100] (default {_DEFAULT_STEPS})")
    p.add_argument("--interval", default=f"{lifecycle.DEFAULT_INTERVAL_S:g}s", metavar="DURATION",
                   help="time at each step before it is judged: 60s, 2m, 500ms (default 60s)")
    p.add_argument("--hold", action="store_true", help="judge but never advance on its own (promote by hand)")
    p.add_argument("--skip-gate", action="store_true", help="start without the load-test gate")
    p.add_argument("--gate-seconds", type=float, metavar="S", help="how long the gate runs (default: the "
                                                                   "version's slo.gate_seconds)")
    p = cmds.add_parser("status", parents=[common], help="the rollout, its current window and its history")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p = cmds.add_parser("promote", parents=[common], help="make the canary live now")
    p.add_argument("name")
    p = cmds.add_parser("abort", parents=[common], help="end the canary: its version is retired")
    p.add_argument("name")

    shadow = sub.add_parser("shadow", parents=[common], help="copy a share of a model's requests to another "
                                                             "version, answers only compared")
    cmds = shadow.add_subparsers(dest="shadow_command", required=True)
    p = cmds.add_parser("start", parents=[common], help="start copying requests to NAME:VERSION")
    p.add_argument("ref", metavar="NAME:VERSION")
    p.add_argument("--share", type=float, default=100.0, metavar="PERCENT",
                   help="percent of the model's requests copied (default 100)")
    p = cmds.add_parser("stop", parents=[common], help="stop the model's shadow")
    p.add_argument("name")
    p = cmds.add_parser("status", parents=[common], help="the running shadow and its agreement so far")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="as JSON")


def run(args) -> int:
    command = (args.command, args.canary_command if args.command == "canary" else args.shadow_command)
    registry = open_registry(getattr(args, "repository", None))
    try:
        return _COMMANDS[command](registry, args)
    finally:
        registry.close()


# ---- canary ------------------------------------------------------------------------

def _canary_start(registry, args) -> int:
    name, version = _name_version(args.ref)
    rollout = lifecycle.start_canary(registry, name, version, steps=args.steps, interval_s=args.interval,
                                     hold=args.hold, skip_gate=args.skip_gate, gate_seconds=args.gate_seconds)
    print(_rollout_line(rollout))
    print(f"  steps {', '.join(f'{w:g}%' for w in rollout.steps)}; {rollout.interval_s:g} s a step"
          + ("; held: promote by hand" if rollout.hold else ""))
    print("  " + _gate_line(_start_evidence(registry, rollout).get("gate")))
    return 0


def _canary_status(registry, args) -> int:
    status = lifecycle.canary_status(registry, args.name)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    rollout = status["rollout"]
    print(_rollout_line_of(rollout) if rollout else f"model {args.name!r}: no canary has run")
    if status["window"]:
        _print_window(status["window"])
    if status["shadow"]:
        print(_shadow_line(status["shadow"]))
    print("history:" if status["history"] else "history: none")
    for e in status["history"]:
        rid = f"#{e['rollout_id']}" if e["rollout_id"] is not None else "-"
        print(f"  {_when(e['at'])}  {e['action']:<12} {rid:>5}  {e['reason'] or _summary(e)}")
    return 0


def _canary_promote(registry, args) -> int:
    print(_rollout_line(lifecycle.promote_canary(registry, args.name)))
    return 0


def _canary_abort(registry, args) -> int:
    print(_rollout_line(lifecycle.abort_canary(registry, args.name)))
    return 0


# ---- shadow ------------------------------------------------------------------------

def _shadow_start(registry, args) -> int:
    name, version = _name_version(args.ref)
    s = lifecycle.start_shadow(registry, name, version, share=args.share)
    print(f"{s.name}:{s.version} shadow #{s.id}: {s.share:g}% of the requests copied, answers compared")
    return 0


def _shadow_stop(registry, args) -> int:
    s = lifecycle.stop_shadow(registry, args.name)
    print(f"{s.name}:{s.version} shadow #{s.id} stopped (ran since {_when(s.started_at)})")
    return 0


def _shadow_status(registry, args) -> int:
    shadow = lifecycle.canary_status(registry, args.name)["shadow"]
    if args.json:
        print(json.dumps(shadow, indent=2))
    else:
        print(_shadow_line(shadow) if shadow else f"model {args.name!r}: no shadow running")
    return 0


# ---- printing ----------------------------------------------------------------------

def _name_version(ref: str) -> tuple:
    name, version = parse_ref(ref, "NAME:VERSION")
    if version is None:
        raise InvalidArgument(f"NAME:VERSION: give the version to roll out, e.g. {name}:2 (got {ref!r})")
    return name, version


def _rollout_line(rollout) -> str:
    return _rollout_line_of(rollout.to_dict())


def _rollout_line_of(r: dict) -> str:
    """One line: who, against what, where it stands."""
    base = f"version {r['base_version']}" if r["base_version"] is not None else "no live version"
    where = f"step {r['step'] + 1} of {len(r['steps'])}, weight {r['weight']:g}%"
    line = f"{r['name']}:{r['version']} rollout #{r['id']}: {r['status']}, {where}, against {base}"
    if not r["active"]:
        line += f"; ended {_when(r['ended_at'])}" + (f": {r['reason']}" if r["reason"] else "")
    return line + ("; held" if r["hold"] and r["active"] else "")


def _start_evidence(registry, rollout) -> dict:
    """The evidence recorded with the rollout's start (the gate's result is there)."""
    for e in reversed(registry.rollouts.history(rollout.name, 20)):
        if e.rollout_id == rollout.id and e.action == "start":
            return e.evidence
    return {}


def _summary(event: dict) -> str:
    """A history line for an event recorded without a reason: what its evidence says."""
    ev = event["evidence"]
    gate = ev.get("gate")
    if event["action"] == "start" and isinstance(gate, dict):
        return (f"gate passed: p99 {_ms(gate['p99_ms'])}, error rate {_pct(gate['error_rate'])} at "
                f"{gate['rate_rps']:g} rps")
    if event["action"] == "start":
        return f"gate {gate}" if isinstance(gate, str) and gate.startswith("skipped") else "-"
    if event["action"] in ("shadow_start", "shadow_stop"):
        return f"shadow #{ev.get('shadow_id')}: version {ev.get('version')} at {ev.get('share', 0):g}%"
    return "-"


def _gate_line(gate) -> str:
    if not isinstance(gate, dict):
        return f"gate: {gate or 'not recorded'}"
    verdict = "passed" if gate["passed"] else "failed"
    line = (f"gate: {verdict} at {gate['rate_rps']:g} rps for {gate['seconds']:g} s: {gate['answered']} of "
            f"{gate['sent']} answered, {gate['errors']} errors ({_pct(gate['error_rate'])}), "
            f"p50 {_ms(gate['p50_ms'])}, p99 {_ms(gate['p99_ms'])} (SLO: p99 {_ms(gate['slo_p99_ms'])}, "
            f"error rate {_pct(gate['slo_max_error_rate'])})")
    return line + (f"\n  gate rate: {gate['rate_basis']}" if gate.get("rate_basis") else "")


def _print_window(window: dict) -> None:
    c, s = window["canary"], window["stable"]
    print(f"window {window['window']} (step {window['step'] + 1}, {window['weight']:g}%):")
    print(f"  {'':<12} {'canary v' + str(c['version']):>18} {'stable v' + str(s['version']):>18}")
    rows = [("requests", lambda a: str(a["requests"])), ("error rate", lambda a: _pct(a["error_rate"])),
            ("p99", lambda a: _ms(a["p99_ms"])),
            ("accuracy", lambda a: f"{_pct(a['accuracy'])} ({a['labelled']} labels)")]
    for label, cell in rows:
        print(f"  {label:<12} {cell(c):>18} {cell(s):>18}")
    delta = window["canary_accuracy_delta"]
    print(f"  agreement {_pct(c['agreement'])} over {c['pairs']} pairs; canary_accuracy_delta "
          f"{'n/a' if delta is None else f'{delta:+.4f}'}")


def _shadow_line(shadow: dict) -> str:
    w = shadow.get("window") or {}
    return (f"shadow #{shadow['id']}: {shadow['name']}:{shadow['version']} at {shadow['share']:g}% since "
            f"{_when(shadow['started_at'])}; agreement {_pct(w.get('agreement'))} over {w.get('pairs', 0)} pairs, "
            f"p99 {_ms(w.get('p99_ms'))}, {w.get('errors', 0)} errors, {w.get('dropped', 0)} dropped")


def _when(t: Optional[float]) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.2f}%"


def _ms(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


_COMMANDS = {
    ("canary", "start"): _canary_start, ("canary", "status"): _canary_status,
    ("canary", "promote"): _canary_promote, ("canary", "abort"): _canary_abort,
    ("shadow", "start"): _shadow_start, ("shadow", "stop"): _shadow_stop, ("shadow", "status"): _shadow_status,
}
