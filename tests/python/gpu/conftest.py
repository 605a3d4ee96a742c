"""Tests of the GPU serving path: torch on a CUDA device through the core's device backend (marked
``gpu``), and its CPU-side rules (config, schema, the memory budget's accounting, the flag).

A test marked ``gpu`` needs a CUDA device that torch and inferline's core both see. Without one
it is skipped, or, with INFERLINE_REQUIRE_GPU=1 (how the device machine runs this folder), it
fails with the reason, so that a machine without a usable GPU never passes silently. Unmarked
tests here run everywhere. They use the fixtures of tests/python/conftest.py (`engine`, `rng`).
"""

import os

import pytest

from gpu.device import gpu_missing


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is None:
        return
    reason = gpu_missing()
    if not reason:
        return
    if os.environ.get("INFERLINE_REQUIRE_GPU") == "1":
        pytest.fail(f"INFERLINE_REQUIRE_GPU=1 but {reason}", pytrace=False)
    pytest.skip(reason)
