"""Rollouts: canary versions judged on live traffic, shadow copies, the load-test gate, label feedback.

Policy lives here, in Python and off the hot path; the per-request split is the core's (the
routing policy's arms over 10,000 hash buckets of the routing key, published by
``service.sync``). Modules:

- ``gate``: the candidate alone in an isolated engine at 2x the model's peak rate, open loop.
- ``lifecycle``: start / promote / abort a canary, start / stop a shadow (checks, gate, registry).
- ``analysis``: one step's window (canary vs stable) -> a decision with its evidence.
- ``controller``: one per model (a registry lease): advances, promotes or rolls back.
- ``recorder``: per-process arm counts, latency, mirrored pairs and predictions, flushed to the
  registry so that the controller sees every worker's traffic.
"""
