"""The small model's latency in a process of its own (bench_engine.py section 5): its own engine,
interpreter and GIL, sharing only the GPU with the process that saturates the heavy model.

    python small_probe.py DEVICE MODEL.pt N_IN N_OUT MAX_BATCH DELAY_US INSTANCES RATE SECONDS WARMUP_S

Prints one JSON line: open_loop()'s result (p50/p99/max ms, errors, counted).
"""

from __future__ import annotations

import json
import sys
import warnings

import engine_load as L

warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)


def main(argv) -> None:
    device, path, n_in, n_out, max_batch, delay_us, instances, rate, seconds, warmup_s = argv
    from inferline import Engine

    with Engine() as engine:
        handle = engine.load(L.config("small_probe", int(n_in), int(n_out), int(max_batch), int(delay_us),
                                      int(instances), None), L.backend(path, device))
        rows = L.payloads(256, int(n_in), seed=6)
        L.warm_buckets(handle, int(n_in), int(max_batch))
        L.closed_loop(handle, rows, float(warmup_s) / 2, threads=1, tasks=2, chunk=8)
        result = L.open_loop(handle, rows, float(rate), float(seconds), threads=1, warmup_s=float(warmup_s) / 2)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
