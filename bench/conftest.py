"""Fixtures for the engine benchmarks (run: pytest bench --benchmark-only -s).

Not part of the default test run (pyproject's testpaths is tests/python). Each
benchmark calls ``report(line)`` once per configuration; the lines are printed
together at the end of the session under "inferline bench".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from inferline import Engine

# pytest's importlib mode (pyproject) puts no test folder on sys.path: make_mlp and bench/server's
# modules are imported from here.
for _folder in (Path(__file__).resolve().parent, Path(__file__).resolve().parent / "server"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

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


# ---- the latency regression suite (test_bench_latency.py, test_bench_server.py) ----------

def _nowait(package):
    """`package` with max_queue_delay_us 0: a lone request is dispatched as soon as a slot is free."""
    import dataclasses

    batching = dataclasses.replace(package.config.batching, max_queue_delay_us=0)
    return dataclasses.replace(package, config=dataclasses.replace(package.config, batching=batching))


def _digits_cases(package):
    inputs, outputs = package.golden_arrays()
    pixels, logits = inputs["pixels"], outputs["logits"]

    def cases(rows, seed=0):
        idx = np.random.default_rng(seed).integers(0, len(pixels), rows)
        return {"pixels": pixels[idx]}, {"logits": logits[idx]}
    return cases


def _mlp_cases(path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def cases(rows, seed=0):
        x = np.random.default_rng(seed).standard_normal((rows, 512), dtype=np.float32)
        return {"x": x}, {"y": sess.run(["y"], {"x": x})[0]}
    return cases


def bench_cpu() -> int:
    """The CPU that the in-process latency benchmarks run on: $INFERLINE_BENCH_CPU, else the last
    one this process may use."""
    return int(os.environ.get("INFERLINE_BENCH_CPU", sorted(os.sched_getaffinity(0))[-1]))


@contextlib.contextmanager
def _pinned(cpu: int):
    """The calling thread (and any thread it starts meanwhile) on `cpu` only; restored after."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture
def pin_to_one_cpu():
    """Runs the test's caller on bench_cpu(), where digits-mlp's engine threads are. A caller on one core
    handing a request to an engine thread on the other pays a cross-core wake-up whose cost on a
    busy shared machine swings the median of a 30 us request 2.5x between runs; on one core it
    moved under 10% (bench/README.md)."""
    with _pinned(bench_cpu()):
        yield


@pytest.fixture(scope="session")
def engine_models(mlp_path):
    """{(model, window): (handle, cases)}: digits-mlp (the demo package) and mlp (make_mlp's MLP as a
    bare .onnx), each loaded as-is ("window") and with no batching window ("nowait"), as a push
    would load them (load_into_engine); digits-mlp's on bench_cpu(). cases(rows, seed) -> (inputs, expected outputs)."""
    pytest.importorskip("onnxruntime")
    from inferline.demo_models import demo_package_path
    from inferline.models.loader import load_into_engine
    from inferline.models.package import load_package

    digits = load_package(demo_package_path("digits-mlp"))
    mlp = load_package(str(mlp_path), name="mlp")
    models, engines = {}, []
    for model, package, cases in (("digits-mlp", digits, _digits_cases(digits)), ("mlp", mlp, _mlp_cases(mlp_path))):
        # digits-mlp's engine threads, started now, stay on bench_cpu() (see pin_to_one_cpu); the
        # heavy model's may use any CPU: pinned, its compute halves whenever a neighbour lands there.
        with _pinned(bench_cpu()) if model == "digits-mlp" else contextlib.nullcontext():
            engines.append(Engine())
            models[(model, "window")] = (load_into_engine(engines[-1], package, 1)[0], cases)
            models[(model, "nowait")] = (load_into_engine(engines[-1], _nowait(package), 2)[0], cases)
    yield models
    for engine in engines:
        engine.close()
    mlp.discard_scratch()


@pytest.fixture(scope="session")
def bench_server(tmp_path_factory):
    """A real `inferline serve` (tests/python/server_fixtures.py's ServerProcess) on free ports, once
    per session, serving the demo models and `digits-mlp-nowait` (digits-mlp, max_queue_delay_us 0)."""
    import shutil

    from inferline.demo_models import demo_package_path
    from server_fixtures import ServerProcess, make_repository, with_config

    root = tmp_path_factory.mktemp("bench-server")
    nowait = shutil.copytree(demo_package_path("digits-mlp"), root / "digits-mlp-nowait")
    with open(nowait / "model.json", encoding="utf-8") as f:
        batching = dict(json.load(f)["batching"], max_queue_delay_us=0)
    with_config(str(nowait), name="digits-mlp-nowait", batching=batching)
    server = ServerProcess(make_repository(root, extra=[str(nowait)]))
    yield server
    server.stop()
