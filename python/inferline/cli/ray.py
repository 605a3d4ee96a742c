"""`inferline ray deploy` and `inferline ray status`: the registry's versions as Ray Serve pools.

    inferline ray deploy --replicas 2                      # every live/canary/shadow version, 2 replicas each
    inferline ray deploy --min-replicas 1 --max-replicas 8 --target-inflight 4 --watch
    inferline ray status --address 10.0.0.5:6379

The work is in inferline.ray; this module parses, picks the cluster and prints.
"""

from __future__ import annotations

import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("ray", help="run the registry's versions as pools of replicas on a Ray cluster (Ray Serve)",
                       description="Each live, canary and shadow version (and the versions fallback chains reach) "
                                   "becomes a pool: a Ray Serve application whose replicas each run "
                                   "`inferline serve --pin NAME:VERSION`. Gateways (`inferline serve --ray`) find "
                                   "the replicas in the cluster's directory actor.")
    cmds = p.add_subparsers(dest="ray_command", required=True)
    d = cmds.add_parser("deploy", help="start, keep or remove pools to match the registry")
    _address(d)
    d.add_argument("--repository", metavar="URL_OR_DIR", help="the registry (default: as `inferline serve`)")
    d.add_argument("--replicas", type=int, default=1, help="replicas per pool (default 1; ignored with autoscaling)")
    d.add_argument("--canary-replicas", type=int,
                   help="replicas of pools that are not a live version: canary, shadow (default: --replicas)")
    d.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas per pool (default 1)")
    d.add_argument("--max-replicas", type=int, help="autoscaling: most replicas per pool (turns autoscaling on)")
    d.add_argument("--target-inflight", type=float, default=4.0,
                   help="autoscaling: requests in flight per replica to aim at (default 4)")
    d.add_argument("--upscale-delay", type=float, default=5.0, help="seconds a rise must last (default 5)")
    d.add_argument("--downscale-delay", type=float, default=60.0, help="seconds a fall must last (default 60)")
    d.add_argument("--num-cpus", type=float, default=0.5, help="logical CPUs per replica (default 0.5)")
    d.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (default 0; 1 = one GPU each)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address each replica binds (default 127.0.0.1; 0.0.0.0 for a multi-node cluster)")
    d.add_argument("--grace", type=float, default=10.0,
                   help="seconds a pool stays up after it is no longer wanted (default 10)")
    d.add_argument("--watch", action="store_true", help="keep following the registry until interrupted")
    d.add_argument("--poll-interval", type=float, default=2.0, help="seconds between registry reads (default 2)")
    d.set_defaults(run=run_deploy)
    s = cmds.add_parser("status", help="pools, their Serve status and replicas with endpoint and load")
    _address(s)
    s.set_defaults(run=run_status)


def _address(p) -> None:
    p.add_argument("--address", help="the Ray cluster (host:port or 'auto'); default: the running one that "
                                     "`ray status` finds, else a local one started for this command")


def _connect(address, quiet: bool = False, start_local: bool = True) -> bool:
    """Joins the cluster; True when it started a local one. Exits with one line on failure."""
    try:
        import ray

        from ..ray import connect
    except ImportError:
        _fail("Ray is not installed: pip install 'inferline[ray]'")
    try:
        if address:
            connect(address)
            _say(quiet, f"connected to the Ray cluster at {address}")
            return False
        try:
            connect("auto")
            _say(quiet, "connected to the running Ray cluster")
            return False
        except ConnectionError:
            if not start_local:
                _fail("no running Ray cluster found (start one with `ray start --head`, or give --address)")
            connect(None)
            _say(quiet, "no running Ray cluster found: started a local one for this command")
            return True
    except (ConnectionError, TimeoutError, ray.exceptions.RaySystemError, ValueError) as e:
        _fail(f"cannot reach the Ray cluster at {address or 'auto'}: {str(e).splitlines()[0] if str(e) else e}")


def run_deploy(args) -> int:
    if args.max_replicas is None and args.min_replicas is not None:
        _fail("--min-replicas needs --max-replicas (autoscaling)")
    local = _connect(args.address)  # first: it turns a missing Ray into one line
    from ..ray.deploy import PoolOptions, deploy

    opts = PoolOptions(replicas=args.replicas, canary_replicas=args.canary_replicas,
                       min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                       target_inflight=args.target_inflight, upscale_delay_s=args.upscale_delay,
                       downscale_delay_s=args.downscale_delay, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                       host=args.host)
    try:
        result = deploy(args.repository, address=args.address or "auto", opts=opts, grace_s=args.grace,
                        watch=args.watch, poll_interval_s=args.poll_interval, on_report=_Reporter())
    except KeyboardInterrupt:
        return 130
    if local:
        print("the local cluster stops with this command: its pools stop too (start one with `ray start --head`, "
              "or use --watch)")
    return 1 if result["failed"] else 0


class _Reporter:
    """Prints each pool once when first seen, then only changes, so that a watch stays quiet."""

    def __init__(self):
        self._seen, self._draining = set(), set()

    def __call__(self, report: dict) -> None:
        stamp = time.strftime("%H:%M:%S")
        for pool in report["started"]:
            print(f"{stamp} started   {pool}", flush=True)
        for pool in sorted(set(report["kept"]) - self._seen):
            print(f"{stamp} unchanged {pool}", flush=True)
        self._seen.update(report["kept"] + report["started"])
        for app, left in report["draining"].items():
            if app not in self._draining:
                print(f"{stamp} unwanted  {app}: removed in {left:.0f} s unless wanted again", flush=True)
        self._draining = set(report["draining"])
        for app in report["removed"]:
            print(f"{stamp} removed   {app}", flush=True)
        for pool, error in report["failed"].items():
            print(f"{stamp} FAILED    {pool}: {error}", flush=True)


def run_status(args) -> int:
    _connect(args.address, quiet=True, start_local=False)
    from ..ray.deploy import status

    apps = status(args.address or "auto")
    print(format_status(apps))
    return 0


def format_status(apps: dict) -> str:
    """A table: one line per pool, then one indented line per replica."""
    if not apps:
        return "no inferline pools on this cluster (run `inferline ray deploy`)"
    lines = [f"{'POOL':<28} {'APPLICATION':<32} {'STATUS':<14} REPLICAS"]
    for app, s in apps.items():
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s["replicas"].items())) or "-"
        lines.append(f"{s['pool'] or '?':<28} {app:<32} {s['status']:<14} {counts}")
        for e in s["endpoints"]:
            load = e["load"]
            health = "ok" if e["age_s"] < 1.5 else "late"  # heartbeats come every 0.5 s
            lines.append(f"    {e['replica']:<24} {e['endpoint']:<22} {health:<5} heartbeat {e['age_s']:.1f}s ago  "
                         f"inflight {load.get('inflight', 0):.2f}  queue {load.get('queue_rows', 0):.0f}  "
                         f"pid {load.get('pid', '?')}")
    return "\n".join(lines)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
