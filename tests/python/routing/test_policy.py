"""The routing policy builder: registry records in, immutable per-model policies out (no server,
no engine, no registry file)."""

import dataclasses

import pytest

from inferline.config import BreakerConfig, CacheConfig
from inferline.errors import InvalidArgument
from inferline.registry import VersionRecord
from inferline.routing.policy import FallbackLink, build_model_policy, build_policies


def rec(ref, state="staged", fallback=None, **config):
    name, version = ref.split(":")
    return VersionRecord(name=name, version=int(version), model_uri="", sha256="0" * 64, runtime_env={},
                         config=config, labels={}, state=state, is_live=state == "live", fallback_id=fallback,
                         created_at=0.0)


def links(*refs):
    return tuple(FallbackLink(r.split(":")[0], int(r.split(":")[1].rstrip("*")), r.endswith("*")) for r in refs)


def test_live_and_canary_are_served_with_resolved_chains():
    records = [rec("m:1", "retired"), rec("m:2", "live", fallback="m:1"), rec("m:3", "canary", fallback="small"),
               rec("m:4", "staged", fallback="m:2"), rec("small:1", "retired"), rec("small:2", "live")]
    policy = build_policies(records)
    assert list(policy) == ["m", "small"]
    m = policy["m"]
    assert (m.live, m.served, sorted(m.versions)) == (2, (2, 3), [2, 3])
    assert m.versions[2].fallback == links("m:1")
    assert m.versions[3].fallback == links("small:2*")  # "small": its live version now
    assert policy["small"].versions[2].fallback == ()


def test_chains_follow_links_across_models_and_stop_at_the_end():
    records = [rec("a:1", "live", fallback="b"), rec("b:1", "live", fallback="c:2"), rec("c:1", "live"),
               rec("c:2", "retired", fallback="d"), rec("d:1", "staged")]  # d has no live version
    assert build_model_policy("a", records).versions[1].fallback == links("b:1*", "c:2")


def test_cycles_stop_before_a_version_is_revisited():
    """The registry refuses cycles at push and set-fallback, but a promote can close one through a
    "name" link; the builder then stops before the repeat, and the served version is never its own
    fallback."""
    records = [rec("a:1", "live", fallback="b"), rec("b:2", "live", fallback="a:1")]
    policy = build_policies(records)
    assert policy["a"].versions[1].fallback == links("b:2*")
    assert policy["b"].versions[2].fallback == links("a:1")
    loop = [rec("x:1", "live", fallback="y:1"), rec("y:1", "retired", fallback="z:1"),
            rec("z:1", "retired", fallback="y:1")]
    assert build_model_policy("x", loop).versions[1].fallback == links("y:1", "z:1")


def test_breaker_and_cache_from_the_stored_config_with_defaults():
    records = [rec("m:1", "live", breaker={"consecutive_failures": 0, "error_rate": 0.2},
                   cache={"max_bytes": 4096, "mode": "last_resort"}), rec("m:2", "canary")]
    m = build_model_policy("m", records)
    assert m.versions[1].breaker == BreakerConfig(consecutive_failures=0, error_rate=0.2)
    assert m.versions[1].cache == CacheConfig(4096, "last_resort")
    assert m.versions[2].breaker == BreakerConfig() and not m.versions[2].cache.enabled
    with pytest.raises(InvalidArgument, match=r"^model 'm' version 1: breaker: .*'probes'"):
        build_model_policy("m", [rec("m:1", "live", breaker={"probes": 1})])


def test_to_core_has_the_core_structs_fields():
    records = [rec("m:1", "retired"), rec("m:2", "live", fallback="m:1", cache={"max_bytes": 64}),
               rec("m:3", "canary", fallback="m:1", cache={"max_bytes": 64, "mode": "last_resort"})]
    core = build_model_policy("m", records).to_core()
    assert core["name"] == "m" and core["live"] == 2 and core["served"] == [2, 3]
    v2, v3 = core["versions"]
    assert v2 == {"version": 2, "chain": [{"model": "m", "version": 1}],
                  "breaker": dataclasses.asdict(BreakerConfig()), "cache_bytes": 64, "cache_last_resort": False}
    assert v3["cache_last_resort"] is True
    assert set(v2["breaker"]) == {"consecutive_failures", "error_rate", "min_requests", "window_us", "open_us",
                                  "half_open_probes"}


def test_policies_are_immutable_and_a_model_without_served_versions_is_empty():
    policy = build_policies([rec("m:1", "staged"), rec("n:1", "live")])
    assert (policy["m"].live, policy["m"].served, dict(policy["m"].versions)) == (None, (), {})
    with pytest.raises(TypeError):
        policy["x"] = None
    with pytest.raises(TypeError):
        policy["n"].versions[2] = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy["n"].live = 2


def test_from_a_real_registry(tmp_path):
    from inferline.registry import Registry
    from store_helpers import push

    reg = Registry.open(str(tmp_path / "repo"))
    try:
        push(reg, tmp_path / "src", "small", b"s1")
        push(reg, tmp_path / "src", "m", b"m1", config={"cache": {"max_bytes": 128}})
        push(reg, tmp_path / "src", "m", b"m2", fallback_id="m:1", state="canary")
        reg.set_fallback("m", 1, "small")
        policy = build_policies(reg.list())
    finally:
        reg.close()
    m = policy["m"]
    assert (m.live, m.served) == (1, (1, 2)) and m.versions[1].cache.max_bytes == 128
    assert m.versions[1].fallback == links("small:1*")
    assert m.versions[2].fallback == links("m:1", "small:1*")
