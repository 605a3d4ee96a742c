"""Tests of inferline.loadgen, the engine of `inferline bench` (the command itself: tests/python/cli/test_bench.py)."""
