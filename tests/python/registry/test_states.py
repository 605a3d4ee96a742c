"""Version states: the one transition table, walked through the registry's public operations.

Every (from, to) pair of distinct states is tried with the operation that asks for ``to``
(promote for live, record_load(failure=...) for failed, record_load() out of failed, set_state
for the rest), plus the other operations that could make the move: the pairs in ``TRANSITIONS``
work with the operations the table names, and every other attempt is refused (FailedPrecondition
naming the version, its state and the target) or leaves the state unchanged where the operation
documents that (a live version's load failure is recorded, the version keeps serving).
"""

import itertools

import pytest

from inferline import errors
from inferline.registry import STATES, TRANSITIONS
from inferline.registry._states import OPERATIONS, check_transition

from store_helpers import push


def version_in(reg, src, state):
    """A version of model 'm' in ``state``; version 1 stays live unless ``state`` is live."""
    push(reg, src, "m", b"v1")  # live (idempotent: the same package)
    rec = push(reg, src, "m", b"v-" + state.encode())
    if state == "live":
        return reg.promote("m", rec.version)
    if state == "failed":
        return reg.record_load("m", rec.version, failure="boom")
    if state != "staged":
        return reg.set_state("m", rec.version, state)
    return rec


def attempt(reg, rec, to, operation):
    """Asks the registry to move ``rec`` to ``to`` through ``operation``; returns the new record."""
    if operation == "set_state":
        return reg.set_state("m", rec.version, to)
    if operation == "promote":
        if to == "live":
            return reg.promote("m", rec.version)
        reg.promote("m", 1 if rec.version != 1 else 2)  # another version: the live one retires
        return reg.get("m", rec.version)
    if operation == "rollback":
        return _attempt_rollback(reg, rec, to)
    if to == "failed":
        return reg.record_load("m", rec.version, failure="boom again")
    return reg.record_load("m", rec.version, model_load_time_s=0.1)


def _attempt_rollback(reg, rec, to):
    if to == "live":  # rec must be on the live history: make it live, move on, roll back
        reg.promote("m", rec.version)
        reg.promote("m", 1)
        return reg.rollback("m")
    reg.promote("m", 1)
    reg.promote("m", rec.version)
    reg.rollback("m")
    return reg.get("m", rec.version)


def test_table_covers_only_known_states_and_operations():
    assert set(STATES) == {"staged", "canary", "live", "retired", "failed"}
    for (a, b), ops in TRANSITIONS.items():
        assert a in STATES and b in STATES and a != b and ops and set(ops) <= set(OPERATIONS)


@pytest.mark.parametrize("a, b", [(a, b) for a, b in itertools.permutations(STATES, 2)])
def test_check_transition_walks_the_table(a, b):
    class Rec:
        state, where, failure = a, "model 'm' version 2", "boom"

    for op in OPERATIONS:
        if op in TRANSITIONS.get((a, b), ()):
            check_transition(Rec, b, op)
        else:
            with pytest.raises(errors.FailedPrecondition) as e:
                check_transition(Rec, b, op)
            message = str(e.value)
            assert "model 'm' version 2" in message and f"move it to {b}" in message and op in message
            assert (f"is {a}" in message) if a != "failed" else ("failed to load (boom)" in message)


def _possible(a, b, op):
    """Whether the test can stage ``op`` from ``a`` towards ``b`` at all (the operation's own
    argument checks aside)."""
    if op == "set_state":
        return b in ("staged", "canary", "retired")
    if op in ("promote", "rollback"):
        return b == "live" or (a == "live" and b == "retired")
    return b == "failed" or (a, b) == ("failed", "staged")  # a successful load can only ask for staged


@pytest.mark.parametrize("a, b, op", [(a, b, op) for a, b in itertools.permutations(STATES, 2)
                                      for op in OPERATIONS if _possible(a, b, op)])
def test_store_operations_follow_the_table(tmp_path, reg, a, b, op):
    rec = version_in(reg, tmp_path / "src", a)
    assert rec.state == a
    if op in TRANSITIONS.get((a, b), ()):
        after = attempt(reg, rec, b, op)
        assert after.state == b and after.is_live == (b == "live")
        return
    try:
        after = attempt(reg, rec, b, op)
    except errors.FailedPrecondition as e:
        assert rec.where in str(e)
    else:  # documented no-move: a live version's failure is recorded while it keeps serving
        assert (a, b, op) == ("live", "failed", "record_load")
        assert after.state == "live" and after.failure == "boom again"
    assert reg.get("m", rec.version).state == a


def test_set_state_refuses_live_and_failed_targets_by_name(tmp_path, reg):
    rec = version_in(reg, tmp_path / "src", "staged")
    with pytest.raises(errors.InvalidArgument, match="state: cannot set 'live': use promote"):
        reg.set_state("m", rec.version, "live")
    with pytest.raises(errors.InvalidArgument, match=r"state: cannot set 'failed': use record_load"):
        reg.set_state("m", rec.version, "failed")
