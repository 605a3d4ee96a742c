"""The load generator behind `inferline bench`: KServe v2 gRPC (unary, stream) and REST, closed
and open loop, across client processes, latencies in mergeable log-bucketed histograms.

    from inferline.loadgen import BenchConfig, Target, run_bench
    report = run_bench(BenchConfig(Target("127.0.0.1:8001", "grpc", "digits-mlp"), rate=200, duration_s=5))
    report["latency_ms"]["p99"], report["throughput_rps"], report["errors"]

Modules: histogram (the histogram), payloads (metadata, inputs, encoding), transport (senders),
worker (one client process), runner (the processes together), report (merge, text, plot),
sweep (highest rate under a p99 target), procstat (CPU time from /proc).
"""

from .histogram import Histogram
from .payloads import Target
from .runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "Histogram", "Target", "run_bench"]
