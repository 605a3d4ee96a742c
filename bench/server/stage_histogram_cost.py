"""What timing a request's decode and encode costs the frontends (frontend_stats.py).

    python bench/server/stage_histogram_cost.py [--number 1000000]

Micro-benchmark (timeit, best of 7, ns per call) of each piece the gRPC and REST frontends add per
request answered OK, next to the floors measured in the same run:
  - empty pybind call:  ``_core.CancelFlag().cancel`` (one relaxed store): the binding's own cost
  - observe_ns:         ``_core.StageHistogram.observe_ns`` (bucket, count, sum, max: relaxed atomics)
  - perf_counter_ns:    one clock read (the frontends add four)
  - per request:        what the frontends add per request: ``stages()`` (a dict lookup), four
                        clock reads, two subtractions and two observe_ns calls
One line per measurement; the last one is the per-request total. Compare it with the server's CPU
per request (bench/server/bench_grpc.py: about 140-260 us on the bench machine).
"""

from __future__ import annotations

import argparse
import timeit
from time import perf_counter_ns

from inferline import _core
from inferline.server.frontend_stats import FrontendStats


def best_ns(stmt, number: int, glb: dict) -> float:
    return min(timeit.repeat(stmt, globals=glb, number=number, repeat=7)) / number * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--number", type=int, default=1_000_000)
    args = ap.parse_args()
    fs = FrontendStats(lambda: ())
    h = _core.StageHistogram()
    glb = {"noop": _core.CancelFlag().cancel, "observe": h.observe_ns, "clock": perf_counter_ns, "fs": fs,
           "py": lambda: None}

    per_request = """
t0 = clock()
t1 = clock()
t2 = clock()
d, e = fs.stages("digits-mlp", "1")
d.observe_ns(t1 - t0)
e.observe_ns(clock() - t2)
"""
    rows = [("python no-op call", "py()"), ("empty pybind call", "noop()"), ("observe_ns", "observe(250_000)"),
            ("perf_counter_ns", "clock()"), ("per request (all of it)", per_request)]
    for name, stmt in rows:
        print(f"{name:26s} {best_ns(stmt, args.number, glb):7.1f} ns")


if __name__ == "__main__":
    main()
