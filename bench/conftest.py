"""Fixtures for the engine benchmarks (run: pytest bench --benchmark-only -s).

Not part of the default test run (pyproject's testpaths is tests/python). Each
benchmark calls ``report(line)`` once per configuration; the lines are printed
together at the end of the session under "inferline bench".
"""

from __future__ import annotations

import asyncio

import pytest

from inferline import Engine

_LINES: list = []


@pytest.fixture
def report():
    """report(line): one result line for this configuration."""
    return _LINES.append


def pytest_terminal_summary(terminalreporter):
    if _LINES:
        terminalreporter.section("inferline bench")
        for line in _LINES:
            terminalreporter.write_line(line)


@pytest.fixture
def engine():
    e = Engine()
    yield e
    e.close()


@pytest.fixture
def loop(engine):
    """A private event loop, driven with run_until_complete inside the (sync) benchmark.

    Depends on `engine` so that the engine (and its loop dispatcher) closes first.
    """
    lp = asyncio.new_event_loop()
    yield lp
    engine.close()
    lp.close()


@pytest.fixture(scope="session")
def mlp_path(tmp_path_factory):
    """bench/models/mlp.onnx if `python bench/make_mlp.py` made it, else a fresh copy in a tmp dir."""
    pytest.importorskip("onnx")
    import make_mlp

    if make_mlp.DEFAULT_PATH.exists():
        return make_mlp.DEFAULT_PATH
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    make_mlp.write_model(path)
    return path
