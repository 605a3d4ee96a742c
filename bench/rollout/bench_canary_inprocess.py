"""What a canary costs per request in-process, where nothing else hides it.

    python bench/rollout/bench_canary_inprocess.py [--requests 20000]

Three Services over the demo digits-mlp, alternately, twice each, 64 concurrent asyncio callers
with 256 routing keys: no rollout; a 10% canary held at its first step (split, per-arm recording,
mirrored copies of canary requests); the same canary with mirroring off. Prints the process CPU
microseconds per request of each and the ratios to no rollout measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "server"))
from bench_grpc import canary_repository  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    from inferline.demo_models import demo_package_path
    from inferline.models.service import open_registry, push
    from inferline.service import Service

    mlp, logreg = demo_package_path("digits-mlp"), demo_package_path("digits-logreg")
    plain = tempfile.mkdtemp(prefix="inferline-bench-plain-")
    registry = open_registry(plain)
    push(registry, logreg)
    push(registry, mlp)
    registry.close()
    repos = {"no rollout": plain, "10% canary": canary_repository(mlp, logreg),
             "10% canary, no mirroring": canary_repository(mlp, logreg, mirror_share=0.0)}
    x = {"pixels": np.random.default_rng(0).integers(0, 17, (1, 64)).astype(np.float32)}
    keys = [f"user-{i}" for i in range(256)]

    async def run(svc, n, concurrency=64):
        async def caller(j):
            for i in range(n // concurrency):
                await svc.infer_async("digits-mlp", x, routing_key=keys[(i * concurrency + j) % len(keys)])
        t0 = time.process_time()
        await asyncio.gather(*(caller(j) for j in range(concurrency)))
        return (time.process_time() - t0) / n * 1e6

    cost = {name: [] for name in repos}
    for _ in range(2):
        for name, repo in repos.items():
            with Service(repo, poll_interval_s=0) as svc:
                asyncio.run(run(svc, 2000))  # warm-up
                cost[name].append(asyncio.run(run(svc, args.requests)))
                print(f"{name:<26} {cost[name][-1]:6.2f} us CPU per request", flush=True)
    base = np.median(cost["no rollout"])
    print()
    for name, values in cost.items():
        print(f"{name:<26} median {np.median(values):6.2f} us  ratio {np.median(values) / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
