"""Routed requests: Engine.publish_policy / submit_routed / infer_routed(_async) over the core Router."""

import concurrent.futures as cf
import re
import threading
import time

import numpy as np
import pytest

import inferline as il
from inferline.engine import RoutedResult
from helpers import make_config

FLAG = -1.0  # a row whose first feature is this makes the failing primary raise


def scaled(k, fail_flagged=False, gate=None):
    def fn(inputs):
        x = inputs["x"]
        if gate is not None:
            gate.wait(10)
        if fail_flagged and (x[:, 0] == FLAG).any():
            raise RuntimeError("flagged row")
        return {"y": x * np.float32(k)}
    return fn


def policy(live=1, chain=(), **extra):
    p = {"name": extra.pop("name", "a"), "live": live, "served": extra.pop("served", [live]),
         "versions": [{"version": live, "chain": [{"model": m, "version": v} for m, v in chain],
                       "breaker": None, "cache_bytes": 0, "cache_last_resort": False}]}
    p.update(extra)
    return p


def rows(rng, n, flagged=()):
    x = rng.standard_normal((n, 4)).astype(np.float32)
    for i in flagged:
        x[i, 0] = FLAG
    return x


@pytest.fixture
def ab(engine):
    engine.load(make_config("a", delay_us=500), scaled(2, fail_flagged=True))
    engine.load(make_config("b", delay_us=500), scaled(3))
    engine.publish_policy("a", policy(chain=[("b", 1)]))
    return engine


def check_answers(x, results):
    for row, r in zip(x, results):
        assert isinstance(r, RoutedResult)
        if row[0] == FLAG:
            assert (r.model, r.version, r.fallback_reason) == ("b", 1, "error")
            np.testing.assert_allclose(r.outputs["y"], row[None] * 3)
        else:
            assert (r.model, r.version, r.fallback_reason) == ("a", 1, None)
            np.testing.assert_allclose(r.outputs["y"], row[None] * 2)


def test_failing_rows_are_answered_by_the_fallback_thread_path(ab, rng):
    x = rows(rng, 64, flagged=range(0, 64, 5))
    futures = [ab.submit_routed("a", {"x": x[i:i + 1]}) for i in range(len(x))]
    check_answers(x, [f.result(10) for f in futures])
    s = ab.routing_stats("a")
    assert s["requests"] == 64 and s["answered_ok"] == 64 and s["answered_by_fallback"] == 13
    assert s["fallbacks"]["error"] == 13


async def test_failing_rows_are_answered_by_the_fallback_asyncio_path(ab, rng):
    import asyncio
    x = rows(rng, 32, flagged=(1, 7, 8))
    results = await asyncio.gather(*(ab.infer_routed_async("a", {"x": x[i:i + 1]}) for i in range(len(x))))
    check_answers(x, results)


def test_explicit_version_bypasses_the_arms(ab, rng):
    ab.load(make_config("a", version=2), scaled(5))
    x = rows(rng, 1)
    assert ab.infer_routed("a", {"x": x}).version == 1
    r = ab.infer_routed("a", {"x": x}, version=2)
    assert (r.model, r.version, r.fallback_reason) == ("a", 2, None)
    np.testing.assert_allclose(r.outputs["y"], x * 5)


def test_routing_key_picks_the_same_arm_every_time(engine, rng):
    engine.load(make_config("a", version=1, delay_us=0), scaled(2))
    engine.load(make_config("a", version=2, delay_us=0), scaled(5))
    arms = [{"version": 1, "lo": 0, "hi": 5000}, {"version": 2, "lo": 5000, "hi": 10000}]
    engine.publish_policy("a", policy(served=[1, 2], arms=arms))
    x = rows(rng, 1)
    first = {k: engine.infer_routed("a", {"x": x}, routing_key=f"user-{k}").version for k in range(40)}
    assert set(first.values()) == {1, 2}
    for k in range(40):
        key = f"user-{k}" if k % 2 else f"user-{k}".encode()
        assert engine.infer_routed("a", {"x": rows(rng, 1)}, routing_key=key).version == first[k]


def test_overload_goes_to_the_fallback(engine, rng):
    gate = threading.Event()
    engine.load(make_config("a", max_batch=1, delay_us=0, queue_capacity=1), scaled(2, gate=gate))
    engine.load(make_config("b", delay_us=0), scaled(3))
    engine.publish_policy("a", policy(chain=[("b", 1)]))
    try:
        futures = [engine.submit_routed("a", {"x": rows(rng, 1)}) for _ in range(6)]
        # The primary holds at most 1 running + 1 queued; which two it holds depends on when its
        # executor takes the first one, so the other four (at least) must be answered by b at once.
        done, held = set(), set(futures)
        while len(done) < 4:
            more, held = cf.wait(held, timeout=10, return_when=cf.FIRST_COMPLETED)
            if not more:
                break
            done |= more
        assert len(done) >= 4 and len(held) <= 2
        overloaded = [f.result(0) for f in done]
    finally:
        gate.set()
    assert all((r.model, r.fallback_reason) == ("b", "overload") for r in overloaded)
    held_results = [f.result(10) for f in held]
    assert all((r.model, r.fallback_reason) == ("a", None) for r in held_results)
    assert all(f.result(10).model in ("a", "b") for f in futures)
    assert engine.routing_stats("a")["fallbacks"]["overload"] >= 4


@pytest.mark.parametrize("bad, field", [
    (policy(versions=[{"version": 1, "chian": []}]), "chian"),
    (policy(versions=[{"version": "1"}]), "versions[0].version"),
    (policy(live=None), "live"),
    (policy(name="other"), "name"),
    (policy(served=[2]), "live"),
    (policy(arms=[{"version": 1, "lo": 0, "hi": 10}]), "arm"),
])
def test_bad_policy_raises_invalid_argument_naming_the_field(ab, bad, field):
    with pytest.raises(il.errors.InvalidArgument, match=re.escape(field)):
        ab.publish_policy("a", bad)


def test_a_fallback_cycle_is_refused(ab):
    with pytest.raises(il.errors.InvalidArgument, match="cycle"):
        ab.publish_policy("b", policy(name="b", chain=[("a", 1)]))


def test_unpublished_model_passes_through(ab, rng):
    ab.load(make_config("c", version=4), scaled(7))
    x = rows(rng, 2)
    r = ab.infer_routed("c", {"x": x})
    assert (r.model, r.version, r.fallback_reason) == ("c", 4, None)
    np.testing.assert_allclose(r.outputs["y"], x * 7)
    with pytest.raises(il.errors.ModelNotFound):
        ab.routing_stats("c")
    ab.remove_policy("a")  # a passes through too now: its flagged rows fail
    with pytest.raises(il.errors.InternalError):
        ab.infer_routed("a", {"x": rows(rng, 1, flagged=[0])})


def test_a_fallback_with_other_inputs_is_skipped(engine, rng):
    engine.load(make_config("a"), scaled(2, fail_flagged=True))
    other = il.ModelConfig(name="z", inputs=[("q", "float32", (-1, 4))], outputs=[("y", "float32", (-1, 4))])
    engine.load(other, lambda d: {"y": d["q"]})
    engine.load(make_config("b"), scaled(3))
    engine.publish_policy("a", policy(chain=[("z", 1), ("b", 1)]))
    r = engine.infer_routed("a", {"x": rows(rng, 1, flagged=[0])})
    assert (r.model, r.fallback_reason) == ("b", "error")


def test_close_drops_the_router_before_the_engine(rng):
    engine = il.Engine()
    engine.load(make_config("a"), scaled(2))
    engine.publish_policy("a", policy())
    f = engine.submit_routed("a", {"x": rows(rng, 1)})
    engine.close()
    assert f.result(10).model == "a"
    with pytest.raises(il.errors.Unavailable):
        engine.submit_routed("a", {"x": rows(rng, 1)})


def test_a_cancelled_awaiting_task_withdraws_its_queued_request(engine, rng):
    """The caller of a cancellable routed request goes away while the request queues behind a
    running batch: the core answers it CANCELLED without computing it (its rows never reach
    the backend); a request that was not cancelled is computed as usual."""
    import asyncio

    gate, seen = threading.Event(), []

    def backend(inputs):
        seen.extend(inputs["x"][:, 0].tolist())
        gate.wait(10)
        return {"y": inputs["x"] * np.float32(2)}

    engine.load(make_config("a", max_batch=1, delay_us=0), backend)
    engine.publish_policy("a", policy())
    first, withdrawn, kept = (np.full((1, 4), v, np.float32) for v in (1.0, 2.0, 3.0))

    async def run():
        busy = asyncio.ensure_future(engine.infer_routed_async("a", {"x": first}, cancellable=True))
        while not seen:  # the first batch is running: the next requests queue
            await asyncio.sleep(0.001)
        gone = asyncio.ensure_future(engine.infer_routed_async("a", {"x": withdrawn}, cancellable=True))
        stays = asyncio.ensure_future(engine.infer_routed_async("a", {"x": kept}, cancellable=True))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)  # the future's done callbacks (which set the flag) run on the next loop turn
        gate.set()
        return await busy, await asyncio.gather(gone, return_exceptions=True), await stays

    ok, (cancelled,), later = asyncio.run(run())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert ok.outputs["y"][0, 0] == 2.0 and later.outputs["y"][0, 0] == 6.0
    assert 2.0 not in seen  # never computed
    deadline = time.time() + 5
    while engine.stats("a")["cancelled"] != 1 and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats("a")["cancelled"] == 1
