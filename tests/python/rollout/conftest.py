"""Tests of the rollout room: the gate, canary analysis and control, shadows, feedback. They use the
fixtures of tests/python/conftest.py (`engine`, `rng`) and the packages of tests/python/server_fixtures.py."""
