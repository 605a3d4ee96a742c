"""Fallback chains end: a fallback that would lead back to the version being set is refused, by
push (add_version, check_fallback) and set_fallback alike, naming the whole cycle. A ``"name"``
link follows that model's live version as it is when the check runs."""

import pytest

from inferline import errors
from inferline.registry._records import FallbackNode, check_fallback_cycle, fallback_path

from store_helpers import push, versions


def cycle(text):
    return pytest.raises(errors.InvalidArgument, match=rf"^fallback_id: fallback cycle: {text}; ")


def test_within_one_model(reg, src):
    push(reg, src, "a", b"a1")
    push(reg, src, "a", b"a2", fallback_id="a:1")
    with cycle("a:1 -> a:2 -> a:1"):
        reg.set_fallback("a", 1, "a:2")
    with cycle("a:1 -> a:2 -> a:1"):
        reg.check_fallback("a", "a:2", version=1)
    assert reg.get("a", 1).fallback_id is None  # nothing changed


def test_between_two_models_pinned_and_unpinned(reg, src):
    push(reg, src, "a", b"a1")
    push(reg, src, "b", b"b1")
    push(reg, src, "b", b"b2", fallback_id="a:1")
    reg.promote("b", 2)
    with cycle("a:1 -> b:2 -> a:1"):
        reg.set_fallback("a", 1, "b:2")
    with cycle("a:1 -> b:2 -> a:1"):  # "b" is b's live version now: b:2
        reg.set_fallback("a", None, "b")
    assert reg.set_fallback("a", 1, "b:1").fallback_id == "b:1"  # b:1 has no fallback: a chain that ends


def test_a_longer_chain(reg, src):
    push(reg, src, "a", b"a1")
    push(reg, src, "b", b"b1", fallback_id="a:1")
    push(reg, src, "c", b"c1", fallback_id="b:1")
    push(reg, src, "d", b"d1", fallback_id="c")
    with cycle("a:1 -> d:1 -> c:1 -> b:1 -> a:1"):
        reg.set_fallback("a", 1, "d:1")
    with cycle("b:1 -> d:1 -> c:1 -> b:1"):
        reg.set_fallback("b", 1, "d")
    with cycle("a:1 -> c:1 -> b:1 -> a:1"):
        reg.set_fallback("a", 1, "c:1")
    push(reg, src, "e", b"e1")
    assert reg.set_fallback("a", 1, "e:1").fallback_id == "e:1"  # d -> c -> b -> a -> e: ends
    with cycle("e:1 -> d:1 -> c:1 -> b:1 -> a:1 -> e:1"):
        reg.set_fallback("e", 1, "d")


def test_unpinned_link_through_a_live_version(reg, src):
    """b:1 falls back to "a" (a's live version): a fallback to b from a's live version is a cycle,
    from a staged version of a it is not, and a push that makes a version live is checked as live."""
    push(reg, src, "a", b"a1")
    push(reg, src, "a", b"a2")
    push(reg, src, "b", b"b1", fallback_id="a")
    with cycle("a:1 -> b:1 -> a:1"):
        reg.set_fallback("a", 1, "b:1")
    assert reg.set_fallback("a", 2, "b:1").fallback_id == "b:1"  # b:1 -> a:1 (live), which has none
    assert reg.check_fallback("a", "b") == "b"  # a push (staged: a has a live version)
    assert push(reg, src, "a", b"a3", fallback_id="b").state == "staged"
    with cycle("a:4 -> b:1 -> a:4"):  # live=True: "a" would be this very version
        push(reg, src, "a", b"a4", fallback_id="b:1", live=True)
    assert versions(reg, "a") == [1, 2, 3] and reg.get("a").version == 1  # nothing recorded, a:1 still live


def test_promote_may_close_a_cycle_and_later_links_into_it_are_allowed(reg, src):
    """Only set_fallback and push are checked: a promote can make a "name" link close a cycle (the
    routing policy stops there), and a link that leads into that cycle without returning to the
    version being set is no cycle of its own."""
    push(reg, src, "a", b"a1")
    push(reg, src, "b", b"b1")
    push(reg, src, "b", b"b2", fallback_id="a:1")
    reg.set_fallback("a", 1, "b")  # a:1 -> b:1 (live), which has no fallback
    reg.promote("b", 2)  # now a:1 -> b:2 -> a:1
    push(reg, src, "c", b"c1")
    assert reg.set_fallback("c", 1, "a:1").fallback_id == "a:1"
    with cycle("a:1 -> b:2 -> a:1"):  # setting it again is refused
        reg.set_fallback("a", 1, "b")


def test_refs_and_other_rules_come_before_the_cycle(reg, src):
    push(reg, src, "a", b"a1")
    with pytest.raises(errors.InvalidArgument, match="refers to model 'a' version 1 itself"):
        reg.set_fallback("a", 1, "a:1")
    with pytest.raises(errors.ModelNotFound, match="fallback 'zz' does not exist"):
        reg.set_fallback("a", 1, "zz")


# ---------------------------------------------------------------------------- the pure walk

def _resolver(records, live):
    by_ref = {(r.name, r.version): r for r in records}
    return lambda n, v: by_ref.get((n, live.get(n) if v is None else v))


def test_fallback_path_follows_links_and_stops():
    recs = [FallbackNode("a", 1, "b"), FallbackNode("b", 2, "c:5"), FallbackNode("c", 5, None)]
    resolve = _resolver(recs, {"b": 2})
    assert fallback_path(recs[0], resolve) == ([("a", 1), ("b", 2), ("c", 5)], False)
    assert fallback_path(FallbackNode("x", 1, "b"), _resolver(recs, {})) == ([("x", 1)], False)  # no live b
    assert fallback_path(FallbackNode("x", 1, "c:9"), resolve) == ([("x", 1)], False)  # deleted meanwhile
    loop = [FallbackNode("a", 1, "b:1"), FallbackNode("b", 1, "a:1")]
    assert fallback_path(FallbackNode("x", 1, "a:1"), _resolver(loop, {})) == (
        [("x", 1), ("a", 1), ("b", 1), ("a", 1)], True)


def test_check_fallback_cycle_for_a_version_not_numbered_yet():
    resolve = _resolver([FallbackNode("b", 1, "a"), FallbackNode("a", 1, None)], {"a": 1})
    check_fallback_cycle("a", None, "b:1", resolve)  # staged: "a" stays a:1
    with pytest.raises(errors.InvalidArgument, match=r"^fallback: fallback cycle: a:new -> b:1 -> a:new; "):
        check_fallback_cycle("a", None, "b:1", resolve, becomes_live=True, field="fallback")
