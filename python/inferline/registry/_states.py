"""Version states and the one table of their allowed transitions.

A version is born staged, canary, live or failed (``add_version``); after that its state moves
only along ``TRANSITIONS``, and only through the registry operation that the table names for
that move. Every store method that changes a state calls ``check_transition`` first, so this
table is the whole state machine (the live version changes only by promote and rollback, a
failure is recorded only by record_load, operators move the rest with set_state)::

    staged  <-> canary <-> retired          set_state
    staged, canary, retired -> live         promote, rollback
    live -> retired                         promote (of another version), rollback
    staged, canary, retired -> failed       record_load(failure=...)
    failed -> staged                        record_load() of a successful load

A live version is never marked failed (it keeps serving where it loaded; its failure is recorded
and the operator rolls back), and a failed version never becomes live.
"""

from __future__ import annotations

from typing import FrozenSet, Mapping, Tuple

from ..errors import FailedPrecondition

STATES = ("staged", "canary", "live", "retired", "failed")

_SET_STATE = frozenset({"set_state"})
_LIVE = frozenset({"promote", "rollback"})
_LOAD = frozenset({"record_load"})

TRANSITIONS: Mapping[Tuple[str, str], FrozenSet[str]] = {
    ("staged", "canary"): _SET_STATE, ("canary", "staged"): _SET_STATE,
    ("staged", "retired"): _SET_STATE, ("retired", "staged"): _SET_STATE,
    ("canary", "retired"): _SET_STATE, ("retired", "canary"): _SET_STATE,
    ("staged", "live"): _LIVE, ("canary", "live"): _LIVE, ("retired", "live"): _LIVE,
    ("live", "retired"): _LIVE,
    ("staged", "failed"): _LOAD, ("canary", "failed"): _LOAD, ("retired", "failed"): _LOAD,
    ("failed", "staged"): _LOAD,
}
"""(from, to) -> the registry operations that may make that move; any other move is refused."""

OPERATIONS = ("set_state", "promote", "rollback", "record_load")

_HINTS = {
    "live": "promote another version or roll back first",
    "failed": "record a successful load first",
}


def check_transition(record, to: str, operation: str) -> None:
    """Raises FailedPrecondition unless ``operation`` may move ``record`` (a VersionRecord) from
    its state to ``to``; the message names the version, its state and the target. Staying in the
    same state is no move and always passes."""
    if to == record.state:
        return
    allowed = TRANSITIONS.get((record.state, to), frozenset())
    if operation in allowed:
        return
    state = f"failed to load ({record.failure})" if record.state == "failed" else f"is {record.state}"
    how = f"only {' or '.join(sorted(allowed))} can" if allowed else "no operation can"
    hint = _HINTS.get(record.state)
    raise FailedPrecondition(f"{record.where} {state}: {operation} cannot move it to {to} ({how}"
                             f"{'; ' + hint if hint else ''})")
