"""Traffic split: shares, sticky keys, and monotonic moves when a canary grows."""

from __future__ import annotations

import collections

import pytest

from modelgate.gateway.core.router import Arm, TrafficSplit


def _split(canaries: dict[str, float]) -> TrafficSplit[str]:
    return TrafficSplit.primary_with_canaries(
        ("prod", "1"), [(name, name, share) for name, share in canaries.items()]
    )


def test_only_a_primary_takes_everything() -> None:
    split = _split({})
    assert {split.choose(None) for _ in range(100)} == {"prod"}
    assert split.choose("user-1") == "prod"


def test_nothing_to_route_to() -> None:
    assert TrafficSplit[str]([]).choose("k") is None
    assert not TrafficSplit[str]([Arm("a", "a", 0.0)])


@pytest.mark.parametrize("keyed", [False, True])
def test_shares_follow_the_weights(keyed: bool) -> None:
    split = _split({"c1": 20.0, "c2": 5.0})
    n = 40_000
    counts = collections.Counter(split.choose(f"user-{i}" if keyed else None) for i in range(n))
    assert counts["c1"] / n == pytest.approx(0.20, abs=0.015)  # 7 sd: ~1e-11 by chance
    assert counts["c2"] / n == pytest.approx(0.05, abs=0.015)
    assert counts["prod"] / n == pytest.approx(0.75, abs=0.015)


def test_a_key_always_lands_on_the_same_arm() -> None:
    split = _split({"c1": 30.0})
    first = {f"user-{i}": split.choose(f"user-{i}") for i in range(2000)}
    rebuilt = _split({"c1": 30.0})  # a new table with the same weights (e.g. after a reload)
    assert all(split.choose(k) == arm and rebuilt.choose(k) == arm for k, arm in first.items())


def test_raising_a_canary_only_moves_users_toward_it() -> None:
    before, after = _split({"c1": 10.0}), _split({"c1": 40.0})
    moved = 0
    for i in range(20_000):
        key = f"user-{i}"
        old, new = before.choose(key), after.choose(key)
        if old != new:
            assert (old, new) == ("prod", "c1"), key
            moved += 1
    assert moved == pytest.approx(20_000 * 0.30, rel=0.1)


def test_with_several_canaries_nobody_leaves_a_canary_but_for_the_raised_one() -> None:
    before = _split({"c1": 10.0, "c2": 10.0})
    after = _split({"c1": 40.0, "c2": 10.0})
    for i in range(20_000):
        key = f"user-{i}"
        old, new = before.choose(key), after.choose(key)
        if old in ("c1", "c2"):
            assert new in (old, "c1"), key


def test_arms_without_weight_get_nothing() -> None:
    split = _split({"c1": 0.0, "c2": 100.0})
    assert {split.choose(f"k{i}") for i in range(500)} == {"c2"}
    assert {split.choose(None) for i in range(500)} == {"c2"}
