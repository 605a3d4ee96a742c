"""What Python's cyclic collector costs the in-process open-loop sender (engine_load.open_loop).

    python3 bench/gpu/open_loop_gc.py            # the sender as it is: only unanswered futures held
    python3 bench/gpu/open_loop_gc.py --keep     # every answered future kept to the end, as before

A zeros model (CPU) at a fixed rate, torch imported so that the heap is a serving process's; prints
p50/p99, the sender's lag and each generation's collections with their longest pause (gc.callbacks).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engine_load as L  # noqa: E402

from inferline import Engine, PythonBackend  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=15000)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--keep", action="store_true", help="also hold every answered future to the end")
    a = p.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    starts, pauses = {}, {0: [], 1: [], 2: []}

    def on_gc(phase, info):
        if phase == "start":
            starts["t"] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - starts["t"])

    kept = []

    class Keeping:
        """The handle, with every future it makes also kept (the old sender's retention)."""

        def __init__(self, handle):
            self.handle = handle

        def submit_on_loop(self, inputs):
            fut = self.handle.submit_on_loop(inputs)
            kept.append(fut)
            return fut

    gc.callbacks.append(on_gc)
    with Engine() as engine:
        handle = engine.load(L.config("zeros", 512, 10, 256, 1000, 2, None),
                             PythonBackend(lambda i: [np.zeros((i["x"].shape[0], 10), np.float32)]))
        rows = L.payloads(512, 512, seed=2)
        for g in pauses:
            pauses[g].clear()
        r = L.open_loop(Keeping(handle) if a.keep else handle, rows, a.rate, a.seconds, threads=2, warmup_s=1.0)
    print(f"{'kept' if a.keep else 'outstanding only'}: {a.rate:,.0f} req/s: p50 {r['p50_ms']:.2f} ms, "
          f"p99 {r['p99_ms']:.2f} ms, sender lag p99 {r['lag_p99_ms']:.2f} ms; " + "; ".join(
              f"gen{g} {len(v)} collections, longest {max(v) * 1e3 if v else 0:.1f} ms" for g, v in pauses.items()))


if __name__ == "__main__":
    main()
