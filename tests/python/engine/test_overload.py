"""The queue discipline under overload (ModelConfig.queue), from Python: the section reaches
the core, a standing queue is served newest first, shed_oldest answers ResourceExhausted and
counts it. The exact orders are tested in C++ (tests/cpp/test_overload.cpp) on a manual clock."""

import threading
import time

import numpy as np
import pytest

from helpers import make_config
from inferline.errors import InvalidArgument, ResourceExhausted


class SlowBackend:
    """y = x; each batch takes `seconds` and records column 0 of its rows."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.order: list = []
        self.lock = threading.Lock()

    def __call__(self, inputs):
        time.sleep(self.seconds)
        with self.lock:
            self.order.extend(int(v) for v in inputs["x"][:, 0])
        return {"y": inputs["x"]}


def _row(k: int) -> dict:
    return {"x": np.full((1, 4), k, np.float32)}


def _load(engine, backend, **queue):
    return engine.load(make_config(max_batch=1, delay_us=0, queue=queue), backend)


def test_a_standing_queue_serves_late_arrivals_before_older_waiters(engine):
    backend = SlowBackend(0.01)
    handle = _load(engine, backend, overload="newest_first", target_us=1000, interval_us=5000)
    early = [handle.submit(_row(k)) for k in range(10)]  # ~100 ms of work
    time.sleep(0.035)  # the queue has stood above 1 ms for longer than 5 ms
    late = [handle.submit(_row(k)) for k in (100, 101, 102)]
    for f in early + late:
        f.result(timeout=30)
    order = backend.order
    assert sorted(order) == list(range(10)) + [100, 101, 102]
    waiting_when_late_arrived = [k for k in range(10) if order.index(k) > order.index(100)]
    assert waiting_when_late_arrived, f"late arrivals ran after every earlier request: {order}"
    assert max(order.index(k) for k in (100, 101, 102)) < max(order.index(k) for k in waiting_when_late_arrived)


def test_fifo_keeps_arrival_order_under_the_same_load(engine):
    backend = SlowBackend(0.01)
    handle = _load(engine, backend, overload="fifo", target_us=1000, interval_us=5000)
    early = [handle.submit(_row(k)) for k in range(10)]
    time.sleep(0.035)
    late = [handle.submit(_row(k)) for k in (100, 101, 102)]
    for f in early + late:
        f.result(timeout=30)
    assert backend.order == list(range(10)) + [100, 101, 102]


def test_shed_oldest_answers_resource_exhausted_and_counts_it(engine):
    backend = SlowBackend(0.01)
    handle = _load(engine, backend, overload="shed_oldest", target_us=1000, interval_us=20_000)
    futures = [handle.submit(_row(k)) for k in range(30)]  # ~300 ms of work against a 20 ms bound
    shed, computed = [], []
    for k, f in enumerate(futures):
        try:
            np.testing.assert_array_equal(f.result(timeout=30)["y"], _row(k)["x"])
            computed.append(k)
        except ResourceExhausted as e:
            assert "overloaded: shed after waiting longer than 20 ms" in str(e)
            shed.append(k)
    assert shed and computed
    assert sorted(backend.order) == computed  # shed requests never reached the backend
    stats = handle.stats()
    assert stats["shed"] == len(shed) and stats["errors"] == 0


def test_bad_queue_policy_is_refused_naming_the_field(engine):
    with pytest.raises(InvalidArgument, match="queue.*overload"):
        _load(engine, SlowBackend(0), overload="lifo")
    with pytest.raises(InvalidArgument, match="interval_us"):
        _load(engine, SlowBackend(0), interval_us=0)
