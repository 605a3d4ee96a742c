"""Tests of the engine facade over the core: API, errors, determinism, preprocessing, binding stubs. They use the fixtures of tests/python/conftest.py
(`engine`, `rng`) and the helpers of tests/python/helpers.py."""
