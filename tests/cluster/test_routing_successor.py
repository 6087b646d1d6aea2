"""ClusterRouting.leader while a partition is handed over: the successor at the next epoch, so the first
NOT_LEADER_OR_FOLLOWER a producer gets carries a KIP-951 hint it can act on (naming ourselves at the current
epoch made librdkafka retry the old owner once more after its backoff: ~2x the pause per move)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from brokers.cluster.routing import ClusterRouting
from brokers.routing import Leader
from metadata.models import OwnerRecord

ME, OTHER, GONE = 1, 2, 3


class _View:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)

    def add_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        pass


def routing(owner: int | None, serving: bool, assigned: int | None, alive: bool = True) -> ClusterRouting:
    owners = _View(owner_of=lambda t, p: None if owner is None else OwnerRecord(owner, 7))
    live = _View(brokers={ME: object(), OTHER: object()})
    election = _View(leader_id=ME)
    return ClusterRouting(
        ME, live, owners, election, {("t", 0)} if serving else set(), lambda: alive,  # type: ignore[arg-type]
        lambda t, p: assigned,
    )  # fmt: skip


def test_serving_owner_is_the_leader() -> None:
    assert routing(ME, serving=True, assigned=OTHER).leader("t", 0) == Leader(ME, 7)


def test_handing_over_names_the_successor_at_the_next_epoch() -> None:
    assert routing(ME, serving=False, assigned=OTHER).leader("t", 0) == Leader(OTHER, 8)


def test_taking_or_fenced_names_ourselves() -> None:
    assert routing(ME, serving=False, assigned=ME).leader("t", 0) == Leader(ME, 7)  # loading after the take
    assert routing(ME, serving=True, assigned=ME, alive=False).leader("t", 0) == Leader(ME, 7)  # self-fenced


def test_no_hint_to_a_successor_that_is_not_live_or_unknown() -> None:
    assert routing(ME, serving=False, assigned=GONE).leader("t", 0) == Leader(ME, 7)
    assert routing(ME, serving=False, assigned=None).leader("t", 0) == Leader(ME, 7)


def test_another_owner_or_none() -> None:
    assert routing(OTHER, serving=False, assigned=ME).leader("t", 0) == Leader(OTHER, 7)
    assert routing(None, serving=False, assigned=ME).leader("t", 0) is None
