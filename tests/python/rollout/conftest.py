"""Tests of the routing room: snapshots and the router. They use the fixtures of tests/python/conftest.py
(`engine`, `rng`) and the helpers of tests/python/helpers.py."""
