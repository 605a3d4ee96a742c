"""Registry storage of canary rollouts, shadows and their controller's feeds (``Registry.rollouts``).

Every method and refusal, the compare-and-set of advance and finish, promote then rollback, leases
on a stepped clock, two processes racing ``begin``, the version 1 -> 2 schema migration, window
counts, predictions and labels, traffic peaks and retention of the versions in use.
"""

import json
import math
import multiprocessing as mp
import sqlite3

import pytest

from inferline import errors
from inferline.registry import Registry, RolloutStore, VersionNotFound, _metadata
from inferline.registry._records import MIGRATIONS, SCHEMA

from store_helpers import INTEGRITY_ERRORS, push, raw_sql, versions

STEPS = (5, 10, 25, 50, 100)


class Clock:
    """A clock that tests step by hand."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(reg):
    c = Clock()
    reg.rollouts.clock = c
    return c


@pytest.fixture
def rs(reg, src, clock):
    """The rollout store of a registry whose model 'm' has live version 1 and staged 2, 3."""
    for content in (b"v1", b"v2", b"v3"):
        push(reg, src, "m", content)
    return reg.rollouts


# ------------------------------------------------------------------------------- rollouts

def test_begin_starts_a_canary_against_the_live_version(reg, rs, clock):
    assert isinstance(rs, RolloutStore) and reg.rollouts is rs and rs._meta is reg._meta
    r = rs.begin("m", 2, steps=STEPS, interval_s=60, evidence={"gate": {"p99_ms": 12.5}})
    assert (r.name, r.version, r.base_version, r.interval_s) == ("m", 2, 1, 60.0)
    assert r.steps == (5.0, 10.0, 25.0, 50.0, 100.0)
    assert (r.status, r.step, r.weight, r.active, r.hold, r.skip_gate) == ("canary", 0, 5.0, True, False, False)
    assert (r.started_at, r.step_started_at, r.ended_at, r.reason) == (1000.0, 1000.0, None, "")
    assert r.window == f"rollout:{r.id}:0"
    assert reg.get("m", 2).state == "canary" and reg.get("m").version == 1
    d = json.loads(json.dumps(r.to_dict()))
    assert d["steps"] == [5.0, 10.0, 25.0, 50.0, 100.0] and d["weight"] == 5.0 and d["active"] is True
    assert rs.active("m") == r == rs.get(r.id) == rs.latest("m") and rs.list_active() == [r]
    [ev] = rs.history("m")
    assert (ev.rollout_id, ev.action, ev.at, ev.evidence) == (r.id, "start", 1000.0, {"gate": {"p99_ms": 12.5}})
    assert json.loads(json.dumps(ev.to_dict()))["action"] == "start"
    assert rs.active("other") is None and rs.latest("other") is None


def test_begin_with_skip_gate_and_hold_from_retired_or_canary(reg, src, rs):
    push(reg, src, "a", b"a1")
    push(reg, src, "a", b"a2")
    reg.set_state("a", 2, "retired")
    r = rs.begin("a", 2, steps=[50], interval_s=0.5, hold=True, skip_gate=True)
    assert (r.hold, r.skip_gate, r.steps) == (True, True, (50.0,))
    assert rs.history("a")[-1].evidence == {"skip_gate": True}
    reg.set_state("m", 3, "canary")
    assert rs.begin("m", 3, steps=STEPS, interval_s=1, evidence={"x": 1}).version == 3
    assert [x.name for x in rs.list_active()] == ["a", "m"]


def test_begin_refusals_name_the_model_version_and_field(reg, src, rs):
    push(reg, src, "solo", b"s1", state="staged")
    push(reg, src, "m", b"v4", failure="CUDA out of memory")
    bad = [
        (dict(name="x"), errors.ModelNotFound, "model 'x' not found"),
        (dict(version=9), VersionNotFound, "model 'm' version 9 not found"),
        (dict(name="solo", version=1), errors.FailedPrecondition,
         "model 'solo' has no live version: a canary needs a stable version to compare with; promote one first"),
        (dict(version=1), errors.FailedPrecondition, "model 'm' version 1 is the live version"),
        (dict(version=4), errors.FailedPrecondition, r"model 'm' version 4 failed to load \(CUDA out of memory\)"),
        (dict(name="a/b"), errors.InvalidArgument, "name: invalid model name"),
        (dict(version=0), errors.InvalidArgument, "version: version must be a positive integer"),
        (dict(steps=()), errors.InvalidArgument, r"steps: expected canary weights .*model 'm' version 2"),
        (dict(steps="5,10"), errors.InvalidArgument, "steps: expected canary weights"),
        (dict(steps=(5, 5, 10)), errors.InvalidArgument, r"steps: weights must be strictly increasing, got \[5.0, 5.0"),
        (dict(steps=(10, 5)), errors.InvalidArgument, "steps: weights must be strictly increasing"),
        (dict(steps=(0, 50)), errors.InvalidArgument, r"steps\[0\]: expected a percentage in \(0, 100\], got 0"),
        (dict(steps=(50, 101)), errors.InvalidArgument, r"steps\[1\]: .* got 101 \(model 'm' version 2\)"),
        (dict(steps=(5, math.nan)), errors.InvalidArgument, r"steps\[1\]: .* got nan"),
        (dict(steps=(5, math.inf)), errors.InvalidArgument, r"steps\[1\]: .* got inf"),
        (dict(steps=(True,)), errors.InvalidArgument, r"steps\[0\]"),
        (dict(interval_s=0), errors.InvalidArgument,
         r"interval_s: expected a finite number > 0, got 0 \(model 'm' version 2\)"),
        (dict(interval_s=math.nan), errors.InvalidArgument, "interval_s"),
        (dict(hold="yes"), errors.InvalidArgument, "hold: expected True or False"),
        (dict(evidence=[1]), errors.InvalidArgument, "evidence: expected a mapping"),
        (dict(evidence={"x": math.nan}), errors.InvalidArgument, "evidence: not JSON-serialisable"),
    ]
    for kw, exc, pattern in bad:
        args = {"name": "m", "version": 2, "steps": STEPS, "interval_s": 60, **kw}
        with pytest.raises(exc, match=pattern):
            rs.begin(args.pop("name"), args.pop("version"), **args)
    assert rs.list_active() == [] and reg.get("m", 2).state == "staged" and rs.history("m") == []
    first = rs.begin("m", 2, steps=STEPS, interval_s=60)
    with pytest.raises(errors.FailedPrecondition, match=rf"model 'm' already has an active rollout #{first.id} "
                                                        r"of version 2 at 5%: promote or abort it first"):
        rs.begin("m", 3, steps=STEPS, interval_s=60)
    assert reg.get("m", 3).state == "staged"


def test_the_unique_index_refuses_a_second_active_rollout(reg, rs, monkeypatch):
    rs.begin("m", 2, steps=STEPS, interval_s=60)
    real, calls = rs._active, []

    def blind_once(db, name):  # the first check misses the active rollout, as a race would
        calls.append(name)
        return None if len(calls) == 1 else real(db, name)

    monkeypatch.setattr(rs, "_active", blind_once)
    with pytest.raises(errors.FailedPrecondition, match="active rollout .* of version 2 .*promote or abort it first"):
        rs.begin("m", 3, steps=STEPS, interval_s=60)
    assert len(calls) == 2 and reg.get("m", 3).state == "staged"  # the whole transaction rolled back
    with raw_sql(reg) as db, pytest.raises(INTEGRITY_ERRORS, match="(?i)unique"):
        db.execute("INSERT INTO rollouts (name, version, steps, interval_s, hold, skip_gate, status, step, "
                   "step_started_at, started_at, reason) VALUES ('m', 3, '[5]', 1, 0, 0, 'canary', 0, 0, 0, '')")


def test_advance_is_compare_and_set(rs, clock):
    r = rs.begin("m", 2, steps=(5, 50, 100), interval_s=60)
    clock.t = 1100.0
    r1 = rs.advance(r.id, expected_step=0, evidence={"canary": {"n": 500}}, reason="healthy")
    assert (r1.step, r1.weight, r1.step_started_at, r1.started_at) == (1, 50.0, 1100.0, 1000.0)
    assert r1.window == f"rollout:{r.id}:1"
    with pytest.raises(errors.FailedPrecondition, match=rf"rollout #{r.id} of model 'm' version 2 is at step 1 "
                                                        r"\(50%\), not expected_step 0: another controller moved it"):
        rs.advance(r.id, expected_step=0, evidence={}, reason="stale")
    assert rs.advance(r.id, expected_step=1, evidence={}, reason="").step == 2
    with pytest.raises(errors.FailedPrecondition, match=r"is at its last step 2 \(100%\): finish it instead"):
        rs.advance(r.id, expected_step=2, evidence={}, reason="")
    rs.finish(r.id, "aborted", evidence={}, reason="operator")
    with pytest.raises(errors.FailedPrecondition, match=rf"#{r.id} .* is aborted, not active: it cannot advance"):
        rs.advance(r.id, expected_step=2, evidence={}, reason="")
    assert [(e.action, e.reason) for e in rs.history("m")] == [
        ("start", ""), ("advance", "healthy"), ("advance", ""), ("aborted", "operator")]
    assert rs.history("m")[1].evidence == {"canary": {"n": 500}}
    with pytest.raises(errors.InvalidArgument, match="rollout_id: expected a positive integer id, got 0"):
        rs.advance(0, expected_step=0, evidence={}, reason="")
    with pytest.raises(errors.InvalidArgument, match="expected_step: expected an integer >= 0, got -1"):
        rs.advance(r.id, expected_step=-1, evidence={}, reason="")
    with pytest.raises(errors.InvalidArgument, match="evidence: expected a mapping"):
        rs.advance(r.id, expected_step=0, evidence=[], reason="")
    with pytest.raises(errors.ModelNotFound, match="rollout_id: rollout #99 not found in repository"):
        rs.advance(99, expected_step=0, evidence={}, reason="")


def test_promote_then_registry_rollback_returns_to_the_base_version(reg, rs, clock):
    r = rs.begin("m", 2, steps=STEPS, interval_s=60)
    with pytest.raises(errors.FailedPrecondition, match=r"at step 0 \(5%\), not expected_step 3"):
        rs.finish(r.id, "promoted", evidence={}, reason="", expected_step=3)
    clock.t = 2000.0
    done = rs.finish(r.id, "promoted", evidence={"accuracy": 0.99}, reason="all steps passed", expected_step=0)
    assert (done.status, done.active, done.ended_at, done.reason) == ("promoted", False, 2000.0, "all steps passed")
    assert reg.get("m").version == 2 and reg.get("m", 1).state == "retired"
    assert rs.active("m") is None and rs.latest("m") == done == rs.get(r.id)
    assert rs.history("m")[-1].action == "promoted" and rs.history("m")[-1].evidence == {"accuracy": 0.99}
    with pytest.raises(errors.FailedPrecondition, match="is promoted, not active: it cannot be rolled back"):
        rs.finish(r.id, "rolled_back", evidence={}, reason="")
    assert reg.rollback("m").version == 1 and reg.get("m", 2).state == "retired"


def test_rolled_back_and_aborted_retire_a_canary_that_is_still_one(reg, src, rs):
    r = rs.begin("m", 2, steps=STEPS, interval_s=60)
    assert rs.finish(r.id, "rolled_back", evidence={"errors": 9}, reason="errors").status == "rolled_back"
    assert reg.get("m", 2).state == "retired" and reg.get("m").version == 1
    r = rs.begin("m", 2, steps=STEPS, interval_s=60)  # retired -> canary again
    reg.record_load("m", 2, failure="segfault")
    with pytest.raises(errors.FailedPrecondition, match="failed to load"):
        rs.finish(r.id, "promoted", evidence={}, reason="")
    assert rs.active("m") == r  # the refused promote changed nothing
    assert rs.finish(r.id, "aborted", evidence={}, reason="load failed").status == "aborted"
    assert reg.get("m", 2).state == "failed"  # left alone
    with pytest.raises(errors.InvalidArgument, match="outcome: expected one of promoted, rolled_back, aborted, got"):
        rs.finish(r.id, "done", evidence={}, reason="")
    with pytest.raises(errors.FailedPrecondition, match="is aborted, not active: it cannot be aborted"):
        rs.finish(r.id, "aborted", evidence={}, reason="")
    assert [e.action for e in rs.history("m")] == ["start", "rolled_back", "start", "aborted"]


def test_record_gate_failure_ends_at_once_and_keeps_the_state(reg, rs, clock):
    r = rs.record_gate_failure("m", 3, steps=STEPS, interval_s=30, evidence={"p99_ms": 900}, reason="p99 over budget")
    assert (r.status, r.active, r.ended_at, r.base_version) == ("gate_failed", False, 1000.0, 1)
    assert r.reason == "p99 over budget"
    assert reg.get("m", 3).state == "staged" and rs.active("m") is None and rs.latest("m") == r
    [ev] = rs.history("m")
    assert (ev.action, ev.rollout_id, ev.evidence) == ("gate_failed", r.id, {"p99_ms": 900})
    assert ev.reason == "p99 over budget"
    assert rs.begin("m", 3, steps=STEPS, interval_s=30).id == r.id + 1
    with pytest.raises(VersionNotFound, match="model 'm' version 7"):
        rs.record_gate_failure("m", 7, steps=STEPS, interval_s=30, evidence={}, reason="")
    with pytest.raises(errors.InvalidArgument, match="reason: expected a string"):
        rs.record_gate_failure("m", 3, steps=STEPS, interval_s=30, evidence={}, reason=None)


def test_get_history_and_note(reg, src, rs):
    with pytest.raises(errors.ModelNotFound, match="rollout #5 not found"):
        rs.get(5)
    with pytest.raises(errors.InvalidArgument, match="rollout_id"):
        rs.get("1")
    r = rs.begin("m", 2, steps=STEPS, interval_s=60)
    ev = rs.note(r.id, "m", "takeover", "previous holder expired", {"from": "w1"})
    assert (ev.action, ev.rollout_id, ev.evidence, ev.name) == ("takeover", r.id, {"from": "w1"}, "m")
    assert rs.note(None, "m", "hold", "operator").rollout_id is None
    for i in range(5):
        rs.note(r.id, "m", "hold", f"h{i}")
    assert [e.reason for e in rs.history("m", limit=2)] == ["h3", "h4"]
    assert len(rs.history("m")) == 8 and [e.seq for e in rs.history("m")] == sorted(e.seq for e in rs.history("m"))
    push(reg, src, "b", b"b1")
    with pytest.raises(errors.InvalidArgument, match=f"rollout_id: rollout #{r.id} is not a rollout of model 'b'"):
        rs.note(r.id, "b", "hold", "")
    with pytest.raises(errors.InvalidArgument, match="action: note records hold or takeover, not 'advance'"):
        rs.note(r.id, "m", "advance", "")
    with pytest.raises(errors.ModelNotFound, match="model 'zz' not found"):
        rs.note(None, "zz", "hold", "")
    with pytest.raises(errors.ModelNotFound, match="model 'zz' not found"):
        rs.history("zz")
    with pytest.raises(errors.InvalidArgument, match="limit"):
        rs.history("m", limit=0)


# ------------------------------------------------------------------------ several processes

def _begin_worker(repo, metadata, version, barrier, out):
    try:
        reg = Registry.open(repo, metadata)
        barrier.wait(60)
        out.put(("ok", reg.rollouts.begin("m", version, steps=STEPS, interval_s=60).version))
    except BaseException as e:  # reported to the test, which checks it
        out.put((type(e).__name__, str(e)))


def test_two_processes_racing_begin_exactly_one_wins(reg, rs, tmp_path, metadata):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_begin_worker, args=(reg.repository, metadata, v, barrier, out)) for v in (2, 3)]
    for p in procs:
        p.start()
    results = sorted([out.get(timeout=120) for _ in procs])
    for p in procs:
        p.join(30)
    assert [r[0] for r in results] == ["FailedPrecondition", "ok"], results
    winner = results[1][1]
    assert "promote or abort it first" in results[0][1] and f"of version {winner} " in results[0][1]
    assert [r.version for r in rs.list_active()] == [winner]
    assert {v: reg.get("m", v).state for v in (2, 3)} == {winner: "canary", 5 - winner: "staged"}


# ---------------------------------------------------------------------------------- leases

def test_leases_expire_and_can_be_taken_over(reg, rs, clock, metadata):
    other = Registry.open(reg.repository, metadata)  # another process's view of the same metadata
    other.rollouts.clock = clock
    try:
        assert rs.lease("controller:m") is None
        assert rs.acquire_lease("controller:m", "w1", ttl_s=10)
        assert not other.rollouts.acquire_lease("controller:m", "w2", ttl_s=10)
        clock.t += 5
        assert rs.acquire_lease("controller:m", "w1", ttl_s=10)  # renewal
        assert other.rollouts.lease("controller:m") == ("w1", 1015.0)
        clock.t += 9.9
        assert not other.rollouts.acquire_lease("controller:m", "w2", ttl_s=10)
        clock.t += 0.2
        assert other.rollouts.acquire_lease("controller:m", "w2", ttl_s=10)  # w1's lease expired
        assert not rs.acquire_lease("controller:m", "w1", ttl_s=10)
        rs.release_lease("controller:m", "w1")  # not w1's: nothing changes
        assert rs.lease("controller:m") == ("w2", clock.t + 10)
        other.rollouts.release_lease("controller:m", "w2")
        assert rs.lease("controller:m") is None and rs.acquire_lease("controller:m", "w1", ttl_s=1)
        with pytest.raises(errors.InvalidArgument, match=r"ttl_s: expected a finite number > 0, got 0 \(lease 'k'\)"):
            rs.acquire_lease("k", "w1", ttl_s=0)
        with pytest.raises(errors.InvalidArgument, match="holder: expected a non-empty string"):
            rs.acquire_lease("k", "", ttl_s=1)
    finally:
        other.close()


# ---------------------------------------------------------------------------------- feeds

def test_window_counts_are_per_worker_and_summed_by_the_reader(rs):
    rs.put_counts("rollout:1:0", "w1", {"stable": {"n": 10, "errors": 1}, "canary": {"n": 2, "errors": 0}})
    rs.put_counts("rollout:1:0", "w2", {"stable": {"n": 5, "errors": 0}})
    rs.put_counts("rollout:1:0", "w1", {"stable": {"n": 12, "errors": 1}})  # cumulative: replaces
    rs.put_counts("rollout:10:0", "w1", {"canary": {"n": 1}})
    counts = rs.window_counts("rollout:1:0")
    assert counts == {"canary": [{"n": 2, "errors": 0}], "stable": [{"n": 12, "errors": 1}, {"n": 5, "errors": 0}]}
    assert sum(c["n"] for c in counts["stable"]) == 17 and rs.window_counts("nothing") == {}
    assert rs.drop_windows("rollout:1:") == 3
    assert rs.window_counts("rollout:1:0") == {} and rs.window_counts("rollout:10:0") == {"canary": [{"n": 1}]}
    with pytest.raises(errors.InvalidArgument, match="prefix: expected a non-empty string"):
        rs.drop_windows("")
    with pytest.raises(errors.InvalidArgument, match=r"arms\['canary'\]: expected a mapping"):
        rs.put_counts("w", "w1", {"canary": 3})
    with pytest.raises(errors.InvalidArgument, match="arms: expected a mapping"):
        rs.put_counts("w", "w1", [("canary", {})])


def test_predictions_labels_and_accuracy(reg, rs, clock):
    rows = [("r1", 1, "cat", 100.0), ("r1", 2, "dog", 100.0), ("r2", 1, "cat", 200.0), ("r3", 2, "cat", 50.0)]
    assert rs.add_predictions("m", rows) == 4
    assert rs.add_predictions("m", [("r1", 1, "bird", 300.0), ("r4", 1, "cat", 300.0)]) == 1  # r1:1 kept
    labels = [("r1", "cat"), ("r2", "dog"), ("r9", "x"), ("r8", "y"), ("r9", "z")]
    assert rs.add_labels("m", labels) == (4, ["r9", "r8"])  # r9 once, labelled z
    assert rs.accuracy("m", 0, [1, 2, 3]) == {1: (1, 2), 2: (0, 1), 3: (0, 0)}
    assert rs.accuracy("m", 150, (1, 2)) == {1: (0, 1), 2: (0, 0)}
    assert rs.add_labels("m", iter([("r2", "cat")])) == (1, [])  # a later label replaces
    assert rs.accuracy("m", 0, [1]) == {1: (2, 2)} and rs.accuracy("m", 0, []) == {}
    assert rs.add_predictions("m", [("r9", 3, "z", 400.0)]) == 1  # the label came first
    assert rs.accuracy("m", 0, [3]) == {3: (1, 1)}
    clock.t = 5000.0
    rs.add_labels("m", [("r4", "cat")])
    assert rs.prune_predictions(older_than=150.0) == 3  # predictions r1:1, r1:2, r3:2
    assert rs.accuracy("m", 0, [1, 3]) == {1: (2, 2), 3: (1, 1)}  # r2, r4; r9
    assert rs.prune_predictions(older_than=1001.0) == 7  # r2:1, r4:1, r9:3; labels of 1000: r1, r2, r9, r8
    assert rs.add_predictions("m", [("r4", 1, "dog", 6000.0)]) == 1
    assert rs.accuracy("m", 0, [1]) == {1: (0, 1)}  # r4's label (stored at 5000) is kept
    with pytest.raises(errors.ModelNotFound, match="model 'zz' not found"):
        rs.add_labels("zz", [("r1", "x")])
    for bad, pattern in [([("r1", 0, "x", 1.0)], r"rows\[0\].version: version must be a positive integer"),
                         ([("r1", 1, "x")], r"rows\[0\]: expected \(request_id, version, predicted, at\)"),
                         ([("", 1, "x", 1.0)], r"rows\[0\].request_id"),
                         ([("r", 1, "x", math.nan)], r"rows\[0\].at: .* \(model 'm'\)"), ("r1", "rows")]:
        with pytest.raises(errors.InvalidArgument, match=pattern):
            rs.add_predictions("m", bad)
    with pytest.raises(errors.InvalidArgument, match=r"items\[1\].label: expected a string"):
        rs.add_labels("m", [("a", "x"), ("b", 3)])


def test_traffic_peak_rate_sums_workers_per_minute(rs):
    assert rs.peak_rate("m", 0) is None
    rs.add_traffic("m", 1000, "w1", 60)
    rs.add_traffic("m", 1000, "w2", 60)
    rs.add_traffic("m", 1001, "w1", 100)
    rs.add_traffic("m", 1001, "w1", 50)  # adds
    rs.add_traffic("other", 1001, "w1", 6000)
    assert rs.peak_rate("m", 0) == 2.5 and rs.peak_rate("m", 1000) == 2.5
    rs.add_traffic("m", 1002, "w2", 120)
    assert rs.peak_rate("m", 1002) == 2.0 and rs.peak_rate("m", 1003) is None
    rs.add_traffic("m", 1121, "w1", 6)  # minutes before 1001 are dropped
    assert rs.peak_rate("m", 0) == 2.5 and rs.peak_rate("m", 1001) == 2.5
    rs.add_traffic("m", 1122, "w1", 0)
    assert rs.peak_rate("m", 0) == 2.0
    with pytest.raises(errors.InvalidArgument, match="count: expected an integer >= 0"):
        rs.add_traffic("m", 1, "w1", -1)
    with pytest.raises(errors.InvalidArgument, match="minute"):
        rs.add_traffic("m", 1.5, "w1", 1)


# --------------------------------------------------------------------------------- shadows

def test_shadows_start_stop_and_refusals(reg, src, rs, clock):
    s = rs.start_shadow("m", 3, 10)
    assert (s.name, s.version, s.share, s.started_at, s.window) == ("m", 3, 10.0, 1000.0, f"shadow:{s.id}")
    assert rs.shadow("m") == s and rs.shadows() == [s] and json.loads(json.dumps(s.to_dict()))["share"] == 10.0
    with pytest.raises(errors.FailedPrecondition,
                       match=rf"model 'm' already has shadow #{s.id} of version 3 at 10%: stop it first"):
        rs.start_shadow("m", 2, 5)
    assert rs.begin("m", 2, steps=STEPS, interval_s=60).active  # a canary and a shadow may run together
    assert rs.stop_shadow("m") == s and rs.shadow("m") is None and rs.shadows() == []
    with pytest.raises(errors.FailedPrecondition, match="model 'm' has no running shadow to stop"):
        rs.stop_shadow("m")
    with pytest.raises(errors.ModelNotFound, match="model 'zz' not found"):
        rs.stop_shadow("zz")
    assert [(e.action, e.rollout_id, e.evidence.get("version")) for e in rs.history("m")] == [
        ("shadow_start", None, 3), ("start", 1, None), ("shadow_stop", None, 3)]
    push(reg, src, "solo", b"s1", state="staged")
    push(reg, src, "m", b"v4", failure="bad weights")
    for args, exc, pattern in [
            (("x", 1, 5), errors.ModelNotFound, "model 'x' not found"),
            (("m", 8, 5), VersionNotFound, "model 'm' version 8 not found"),
            (("solo", 1, 5), errors.FailedPrecondition, "model 'solo' has no live version: a shadow needs"),
            (("m", 1, 5), errors.FailedPrecondition, "model 'm' version 1 is the live version"),
            (("m", 4, 5), errors.FailedPrecondition, r"version 4 failed to load \(bad weights\)"),
            (("m", 3, 0), errors.InvalidArgument,
             r"share: expected a percentage in \(0, 100\], got 0 \(model 'm' version 3\)"),
            (("m", 3, 100.5), errors.InvalidArgument, "share"), (("m", 3, math.nan), errors.InvalidArgument, "share")]:
        with pytest.raises(exc, match=pattern):
            rs.start_shadow(*args)
    assert rs.start_shadow("m", 3, 100).id == s.id + 1


def test_the_unique_index_refuses_a_second_shadow(rs, monkeypatch):
    first = rs.start_shadow("m", 2, 5)
    real, calls = rs._shadow, []
    monkeypatch.setattr(rs, "_shadow", lambda db, name: calls.append(name) or (None if len(calls) == 1
                                                                                else real(db, name)))
    with pytest.raises(errors.FailedPrecondition, match=f"shadow #{first.id} of version 2 at 5%: stop it first"):
        rs.start_shadow("m", 3, 5)
    monkeypatch.undo()
    assert rs.shadows() == [first] and [e.action for e in rs.history("m")] == ["shadow_start"]


def test_retention_keeps_the_versions_of_a_running_shadow_and_an_active_rollout(tmp_path, src, metadata):
    with Registry.open(str(tmp_path / "repo"), metadata, keep_versions=2) as reg:
        for i in range(1, 4):
            push(reg, src, "m", b"w%d" % i)
        reg.rollouts.start_shadow("m", 2, 5)
        reg.rollouts.begin("m", 3, steps=STEPS, interval_s=60)
        reg.set_state("m", 3, "staged")  # an operator moved it: the active rollout still keeps it
        for i in range(4, 7):
            push(reg, src, "m", b"w%d" % i)
        assert versions(reg, "m") == [1, 2, 3, 5, 6]
        reg.rollouts.stop_shadow("m")
        reg.rollouts.finish(reg.rollouts.active("m").id, "aborted", evidence={}, reason="")
        reg.gc(min_age_s=0)
        assert versions(reg, "m") == [1, 5, 6]


# ------------------------------------------------------------------------------- migration

V1_SCHEMA = tuple(s for s in SCHEMA if not any(s in stmts for stmts in MIGRATIONS.values())
                  and not s.startswith("PRAGMA user_version")) + ("PRAGMA user_version = 1",)
"""What a version-1 inferline created: the schema without the later tables."""


def _master(path):
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")), \
            db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_version_1_file_is_migrated_when_opened(tmp_path, src, monkeypatch):
    repo = str(tmp_path / "old")
    with monkeypatch.context() as m:  # the previous code: schema version 1
        m.setattr(_metadata, "SCHEMA", V1_SCHEMA)
        m.setattr(_metadata, "SCHEMA_VERSION", 1)
        with Registry.open(repo) as reg:
            push(reg, src, "m", b"v1")
            push(reg, src, "m", b"v2")
            path = reg.metadata_path
    tables, version = _master(path)
    assert version == 1 and "rollouts" not in {t[1] for t in tables}
    with Registry.open(repo) as reg:
        assert versions(reg, "m") == [1, 2] and reg.get("m").version == 1
        r = reg.rollouts.begin("m", 2, steps=STEPS, interval_s=60)
        assert reg.rollouts.finish(r.id, "promoted", evidence={}, reason="").status == "promoted"
        assert reg.rollback("m").version == 1
    with Registry.open(str(tmp_path / "new")) as fresh:
        assert _master(path) == _master(fresh.metadata_path)  # same tables, indexes and version
    assert _master(path)[1] == 2
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 3")
    db.close()
    with pytest.raises(errors.FailedPrecondition, match="schema version 3 is newer than this inferline's"):
        Registry.open(repo)
