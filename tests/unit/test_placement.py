"""Ensemble placement policies (storage/ledger/placement.py): rack spread, degrade, enforce, load."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from storage.ledger.api import NotEnoughBookies
from storage.ledger.placement import (
    PLACEMENTS,
    LeastLoadedPlacement,
    RackAwarePlacement,
    placement_named,
    racks_per_write_set,
)


def layout(**counts: int) -> dict[str, str]:
    """bookie id → rack, e.g. layout(a=2, b=1) → {"a0": "a", "a1": "a", "b0": "b"}."""
    return {f"{rack}{i}": rack for rack, n in counts.items() for i in range(n)}


def best_possible(live: list[str], racks: dict[str, str], size: int, qw: int) -> int:
    """The best minimum racks-per-write-set any ensemble of ``size`` among ``live`` reaches (brute force)."""
    best = 0
    for members in itertools.combinations(live, size):
        first, rest = members[0], members[1:]  # rotations are equivalent: fix the first position
        for perm in itertools.permutations(rest):
            best = max(best, min(racks_per_write_set((first, *perm), qw, racks)))
    return best


def test_spans_every_rack_when_the_ensemble_can() -> None:
    racks = layout(a=3, b=3, c=3)
    policy = RackAwarePlacement(rng=random.Random(1))
    for _ in range(50):
        ensemble = policy.choose(list(racks), 3, {}, racks=racks, write_quorum=2)
        assert len(set(ensemble)) == 3
        assert {racks[b] for b in ensemble} == {"a", "b", "c"}
        assert min(racks_per_write_set(ensemble, 2, racks)) == 2


def test_larger_ensembles_keep_each_write_set_on_two_racks() -> None:
    racks = layout(a=4, b=4, c=1)
    policy = RackAwarePlacement(rng=random.Random(2))
    for size, qw in [(4, 2), (5, 2), (6, 3), (7, 2), (8, 2)]:
        ensemble = policy.choose(list(racks), size, {}, racks=racks, write_quorum=qw)
        assert len(set(ensemble)) == size
        assert len({racks[b] for b in ensemble}) == 3  # as many racks as there are
        assert min(racks_per_write_set(ensemble, qw, racks)) >= 2, (size, qw, ensemble)
        per_rack = Counter(racks[b] for b in ensemble)
        assert max(per_rack.values()) - min(per_rack["a"], per_rack["b"]) <= 1  # no rack takes more than its share


@pytest.mark.parametrize("seed", range(200))
def test_as_good_as_any_ensemble_on_small_clusters(seed: int) -> None:
    rng = random.Random(seed)
    counts = {rack: rng.randint(1, 3) for rack in "abc"[: rng.randint(1, 3)]}
    racks = layout(**counts)
    live = list(racks)
    size = rng.randint(1, min(5, len(live)))
    qw = rng.randint(1, size)
    ensemble = RackAwarePlacement(rng=rng).choose(live, size, {}, racks=racks, write_quorum=qw)
    assert len(set(ensemble)) == size and set(ensemble) <= set(live)
    assert len({racks[b] for b in ensemble}) == min(size, len(counts))
    need = min(2, qw)
    got = min(racks_per_write_set(ensemble, qw, racks))
    assert got >= min(need, best_possible(live, racks, size, qw)), (counts, size, qw, ensemble)


def test_degrades_to_best_effort_without_enough_racks() -> None:
    one_rack = layout(a=5)
    ensemble = RackAwarePlacement().choose(list(one_rack), 3, {}, racks=one_rack, write_quorum=2)
    assert len(set(ensemble)) == 3
    two_racks = layout(a=4, b=1)  # E=3, Qw=2: two bookies of rack a are neighbours, whatever the order
    ensemble = RackAwarePlacement().choose(list(two_racks), 3, {}, racks=two_racks, write_quorum=2)
    assert len(set(ensemble)) == 3
    assert "b0" in ensemble
    assert sorted(racks_per_write_set(ensemble, 2, two_racks)) == [1, 2, 2]


def test_bookies_without_a_rack_form_one_rack() -> None:
    racks = {"x": "r1"}  # y and z have none
    ensemble = RackAwarePlacement().choose(["x", "y", "z"], 2, {}, racks=racks, write_quorum=2)
    assert "x" in ensemble


def test_enforce_refuses_too_few_racks_clearly() -> None:
    policy = RackAwarePlacement(enforce_min_racks=True)
    racks = layout(a=5)
    with pytest.raises(NotEnoughBookies, match=r"must span 2 racks.*1 rack\(s\): a: 5"):
        policy.choose(list(racks), 3, {}, racks=racks, write_quorum=2)
    racks = layout(a=4, b=1)
    with pytest.raises(NotEnoughBookies, match=r"cannot place 3 bookies so that every write set of 2 spans 2 racks"):
        policy.choose(list(racks), 3, {}, racks=racks, write_quorum=2)
    # the same live set is fine where it can be done: E=3 Qw=3 (the write set is the whole ensemble)
    ensemble = policy.choose(list(racks), 3, {}, racks=racks, write_quorum=3)
    assert {racks[b] for b in ensemble} == {"a", "b"}
    # and Qw=1 needs one rack per write set only
    assert len(RackAwarePlacement(enforce_min_racks=True).choose(["a0", "a1"], 2, {}, racks=racks, write_quorum=1)) == 2


def test_enforce_counts_live_bookies_not_registered_ones() -> None:
    racks = layout(a=3, b=3)
    policy = RackAwarePlacement(enforce_min_racks=True)
    with pytest.raises(NotEnoughBookies):
        policy.choose(["a0", "a1", "a2"], 3, {}, racks=racks, write_quorum=2)  # rack b is down
    with pytest.raises(NotEnoughBookies, match="need 3 bookies"):
        policy.choose(["a0", "b0"], 3, {}, racks=racks, write_quorum=2)


def test_least_loaded_within_each_rack_and_least_loaded_racks_first() -> None:
    racks = layout(a=3, b=3, c=2)
    load = {"a0": 5, "a1": 0, "a2": 2, "b0": 1, "b1": 1, "b2": 3, "c0": 4, "c1": 9}
    for seed in range(20):
        ensemble = RackAwarePlacement(rng=random.Random(seed)).choose(
            list(racks), 2, load, racks=racks, write_quorum=2
        )
        assert set(ensemble) == {"a1"} | ({"b0"} if "b0" in ensemble else {"b1"})  # racks c is the busiest
    ensemble = RackAwarePlacement().choose(list(racks), 6, load, racks=racks, write_quorum=2)
    assert set(ensemble) == {"a1", "a2", "b0", "b1", "c0", "c1"}  # two of each rack, least loaded first


def test_spreads_load_over_repeated_placements() -> None:
    racks = layout(a=2, b=2, c=2)
    load: Counter[str] = Counter()
    policy = RackAwarePlacement(rng=random.Random(3))
    for _ in range(60):
        for bookie in policy.choose(list(racks), 3, load, racks=racks, write_quorum=2):
            load[bookie] += 1
    assert set(load.values()) == {30}


def test_least_loaded_ignores_racks_and_names() -> None:
    racks = layout(a=3)
    ensemble = LeastLoadedPlacement().choose(list(racks), 3, {}, racks=racks, write_quorum=2)
    assert sorted(ensemble) == ["a0", "a1", "a2"]
    assert isinstance(placement_named("rack-aware"), RackAwarePlacement)
    assert isinstance(placement_named("least-loaded"), LeastLoadedPlacement)
    assert PLACEMENTS == ("least-loaded", "rack-aware")
    with pytest.raises(ValueError, match="unknown placement"):
        placement_named("zone")
    with pytest.raises(ValueError, match="min_racks_per_write_set"):
        RackAwarePlacement(min_racks_per_write_set=0)


def test_broker_config_names_the_policy() -> None:
    from brokers.config import BrokerConfig, ConfigError

    assert BrokerConfig().ledger_placement == "least-loaded"
    config = BrokerConfig().with_overrides(["ledger.placement=rack-aware"])
    assert isinstance(placement_named(config.ledger_placement), RackAwarePlacement)
    assert config.broker_configs()["ledger.placement"] == "rack-aware"
    with pytest.raises(ConfigError, match=r"ledger\.placement=.*not least-loaded or rack-aware"):
        BrokerConfig().with_overrides(["ledger.placement=random"])
