"""The rollout recorder on its own: counts that come from elsewhere (the native frontend's arm
counts, ``count_sources``), the per-second cap on copies, and copies drawn by the caller."""

import time

import numpy as np

from inferline.engine import RoutedResult
from inferline.rollout.recorder import LATENCY_BOUNDS_MS, Recorder, Watch
from helpers import make_config


class Registry:
    """What ``Recorder.flush`` writes to: the registry's rollout store, kept in memory."""

    def __init__(self):
        self.rollouts = self
        self.counts = {}

    def put_counts(self, window, worker, arms):
        self.counts[window] = {arm: dict(c) for arm, c in arms.items()}

    def add_predictions(self, model, rows):
        pass


def canary_watch(**kw) -> Watch:
    return Watch("m", 1, canary=2, window="w1", **kw)


def rows(requests, errors=0, fallbacks=0, version=2, model="m"):
    latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    latency[10] = requests
    return [(model, version, requests, errors, fallbacks, latency)]


def test_counts_from_a_source_reach_the_window_at_flush(engine):
    recorder = Recorder(engine)
    recorder.publish({"m": canary_watch()})
    pending = [rows(5, errors=2, fallbacks=1), rows(3, version=1), rows(7, version=9), rows(4, model="other")]
    recorder.count_sources.append(lambda: pending.pop(0) if pending else [])
    registry = Registry()
    for _ in range(4):
        recorder.collect()
    recorder.flush(registry, "worker-1")
    window = registry.counts["w1"]
    assert (window["canary"]["requests"], window["canary"]["errors"], window["canary"]["fallbacks"]) == (5, 2, 1)
    assert window["stable"]["requests"] == 3  # version 9 and model "other" are on no watched arm: dropped
    assert window["canary"]["latency"][10] == 5


def test_publish_collects_for_the_old_watches_first(engine):
    recorder = Recorder(engine)
    recorder.publish({"m": canary_watch()})
    recorder.count_sources.append(lambda: rows(6))
    recorder.publish({"m": Watch("m", 1, canary=2, window="w2")})  # the next step: a new window
    registry = Registry()
    recorder.count_sources.clear()
    recorder.flush(registry, "worker-1")
    assert registry.counts["w1"]["canary"]["requests"] == 6
    assert registry.counts["w2"]["canary"]["requests"] == 0


def test_a_failing_source_loses_only_its_own_counts(engine):
    recorder = Recorder(engine)
    recorder.publish({"m": canary_watch()})

    def broken():
        raise RuntimeError("gone")

    recorder.count_sources += [broken, lambda: rows(2)]
    recorder.collect()
    assert recorder.watch("m").arms[2].requests == 2


def copies_started(recorder, watch, answers, **kw) -> int:
    w = recorder.watch("m")
    x = np.ones((1, 4), np.float32)
    result = RoutedResult({"y": x * 2}, "m", 2, None, 2)
    for _ in range(answers):
        recorder.answered(w, {"x": x}, result, time.perf_counter(), **kw)
    deadline = time.monotonic() + 10
    while recorder.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    c = w.arms[2]
    return c.pairs + c.copy_errors + c.dropped


def loaded(engine):
    engine.load(make_config("m", version=1, delay_us=0), lambda inputs: {"y": inputs["x"] * np.float32(2)})
    engine.load(make_config("m", version=2, delay_us=0), lambda inputs: {"y": inputs["x"] * np.float32(2)})
    return engine


def test_the_cap_samples_copies_per_second_and_never_counts(engine):
    recorder = Recorder(loaded(engine))
    recorder.publish({"m": canary_watch(mirror_max_per_s=10.0)})  # one copy per 100 ms window
    started = copies_started(recorder, "m", 50)
    assert 1 <= started <= 5  # 50 answers within a few windows
    assert recorder.watch("m").arms[2].requests == 50  # every answer counted
    assert recorder.watch("m").arms[2].pairs == started and recorder.watch("m").arms[2].agree == started


def test_without_a_cap_every_canary_answer_is_mirrored(engine):
    recorder = Recorder(loaded(engine))
    recorder.publish({"m": canary_watch()})
    assert copies_started(recorder, "m", 20) == 20


def test_a_copy_drawn_by_the_caller_skips_the_draw_and_the_cap(engine):
    recorder = Recorder(loaded(engine))
    recorder.publish({"m": canary_watch(mirror_share=0.0, mirror_max_per_s=10.0)})
    assert copies_started(recorder, "m", 12, counted=True, copy=True) == 12
    assert recorder.watch("m").arms[2].requests == 0  # counted elsewhere
    assert copies_started(recorder, "m", 5, counted=True, copy=False) == 12  # no more copies
