"""The request tap and arm watches of _core.NativeFrontend: records drained through the eventfd,
the bounded queue, per-arm counts of a rollout counted in C++ and the copies it asks for. Skipped
where this build has no native frontend (_core.NATIVE_FRONTEND says why)."""

from __future__ import annotations

import select
import threading
import time

import numpy as np
import pytest

from inferline import _core

if _core.NATIVE_FRONTEND:
    pytest.skip(_core.NATIVE_FRONTEND, allow_module_level=True)

import tritonclient.grpc as tc  # noqa: E402

from native_helpers import infer, rows  # noqa: E402


def wait_readable(fd, timeout_s=5.0) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_tap_records_arrive_through_the_eventfd(start):
    fe, client = start(tap=True)
    assert fe.tap_fd() >= 0 and fe.drain_tap() == [] and fe.tap_dropped == 0
    fe.set_tap_share("a", 1.0)
    sent = {f"r{i}": rows(i + 1, seed=i) for i in range(3)}
    for rid, x in sent.items():
        infer(client, x, request_id=rid)
    records = []
    deadline = time.monotonic() + 5
    while len(records) < 3 and time.monotonic() < deadline:
        if wait_readable(fe.tap_fd(), 0.5):
            records += fe.drain_tap()
    assert sorted(r[1] for r in records) == sorted(sent)
    for (model, rid, inputs, outputs, code, message, ans_model, ans_version, reason, primary, latency_us,
         requested, reasons) in records:
        assert (model, code, message, ans_model, ans_version, reason, primary, requested, reasons) == \
            ("a", 0, "", "a", 1, "none", 1, 0, _core.TAP_SAMPLED)
        np.testing.assert_array_equal(inputs["x"], sent[rid])
        np.testing.assert_array_equal(outputs["y"], sent[rid] * 2)
        assert inputs["x"].flags.owndata and outputs["y"].flags.owndata
        assert latency_us > 0
    assert not wait_readable(fe.tap_fd(), 0)  # drained: the fd is clear
    assert fe.tap_dropped == 0

    infer(client, rows(1), request_id="named", model_version="1")  # a version named: not routed by the policy
    assert wait_readable(fe.tap_fd(), 5)
    [named] = fe.drain_tap()
    assert (named[1], named[9], named[11]) == ("named", 1, 1)

    fe.set_tap_share("a", 0)  # (a request's share is read after its answer went out: set before sending)
    infer(client, rows(1), request_id="not-tapped")
    assert not wait_readable(fe.tap_fd(), 0.3) and fe.drain_tap() == []


def test_tap_queue_is_bounded_and_counts_what_it_drops(start):
    fe, _ = start(tap=True)
    fe.set_tap_share("a", 1.0)
    sent, capacity, extra = 0, 4096, 24
    x = rows(1)

    def send(n):
        with tc.InferenceServerClient(f"127.0.0.1:{fe.port}") as client:
            for _ in range(n):
                infer(client, x)

    threads = [threading.Thread(target=send, args=((capacity + extra) // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        sent += (capacity + extra) // 4
    deadline = time.monotonic() + 5  # the last records are handed over after their answers
    while fe.tap_dropped < sent - capacity and time.monotonic() < deadline:
        time.sleep(0.01)
    records = fe.drain_tap()
    assert (len(records), fe.tap_dropped) == (capacity, sent - capacity)
    assert not wait_readable(fe.tap_fd(), 0)
    dropped = fe.tap_dropped
    send(1)  # room again
    assert wait_readable(fe.tap_fd(), 5) and len(fe.drain_tap()) == 1 and fe.tap_dropped == dropped


def test_tap_share_is_checked_and_absent_without_tap(start):
    fe, _ = start()
    assert fe.tap_fd() == -1 and fe.drain_tap() == [] and fe.tap_dropped == 0
    with pytest.raises(ValueError):
        fe.set_tap_share("a", 1.5)


# ---- arm watches ------------------------------------------------------------------------

BOUNDS = [0.001, 1.0, 60_000.0]


def drain_until(fe, n, timeout_s=5.0) -> list:
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < n and time.monotonic() < deadline:
        if wait_readable(fe.tap_fd(), 0.2):
            records += fe.drain_tap()
    return records


def test_an_arm_watch_counts_in_cpp_and_copies_what_it_is_asked_to(start):
    fe, client = start(tap=True)
    fe.set_arm_watch("a", {1: 1.0}, BOUNDS, 0.0, True)
    for i in range(5):
        infer(client, rows(1, seed=i), request_id=f"r{i}" if i % 2 else "")
    infer(client, rows(1), model_version="1")  # a version named: on no arm
    records = drain_until(fe, 5)
    assert len(records) == 5 and not wait_readable(fe.tap_fd(), 0.2)
    for r in records:
        assert r[12] & _core.TAP_COPY and not r[12] & _core.TAP_SAMPLED
        assert bool(r[12] & _core.TAP_LABEL) == bool(r[1])
    [(model, version, requests, errors, fallbacks, latency)] = fe.take_arm_counts()
    assert (model, version, requests, errors, fallbacks) == ("a", 1, 5, 0, 0)
    assert len(latency) == len(BOUNDS) + 1 and sum(latency) == 5 and latency[0] == 0
    assert fe.take_arm_counts() == []  # taken

    fe.set_arm_watch("a", {1: 0.0}, BOUNDS)  # counted, nothing copied
    infer(client, rows(1), request_id="x")
    assert not wait_readable(fe.tap_fd(), 0.3)
    assert [c[:3] for c in fe.take_arm_counts()] == [("a", 1, 1)]
    fe.set_arm_watch("a", None)
    infer(client, rows(1))
    assert fe.take_arm_counts() == []


def test_the_copy_cap_samples_copies_but_never_counts(start):
    fe, client = start(tap=True)
    fe.set_arm_watch("a", {1: 1.0}, BOUNDS, 10.0)  # one copy per 100 ms window
    for i in range(20):
        infer(client, rows(1, seed=i))
    copies = drain_until(fe, 20, timeout_s=0.5)
    assert 1 <= len(copies) < 20
    assert [c[2] for c in fe.take_arm_counts()] == [20]


def test_a_bad_arm_watch_is_refused(start):
    fe, _ = start(tap=True)
    with pytest.raises(_core.CoreError, match="share"):
        fe.set_arm_watch("a", {1: 1.5}, BOUNDS)
    with pytest.raises(_core.CoreError, match="ascending"):
        fe.set_arm_watch("a", {1: 1.0}, [2.0, 1.0])
