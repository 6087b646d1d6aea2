"""Ensemble placement and BookKeeper's round-robin distribution schedule.

Placement picks the E bookies of a new ledger among the live ones. The distribution schedule says which
of them store an entry: entry ``e`` goes to ensemble positions ``(e + i) mod E`` for ``i < Qw`` (its write
set), so with E > Qw consecutive entries are striped across the ensemble.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Protocol

from storage.ledger.api import NotEnoughBookies


def check_quorums(ensemble_size: int, write_quorum: int, ack_quorum: int) -> None:
    """Raise ValueError unless E >= Qw >= Qa >= 1."""
    if not ensemble_size >= write_quorum >= ack_quorum >= 1:
        raise ValueError(
            f"need ensemble >= write quorum >= ack quorum >= 1, got {ensemble_size}/{write_quorum}/{ack_quorum}"
        )


def write_set(entry_id: int, ensemble_size: int, write_quorum: int) -> list[int]:
    """Ensemble positions that store ``entry_id``, in the order a reader should try them."""
    return [(entry_id + i) % ensemble_size for i in range(write_quorum)]


def covers(responded: set[int], ensemble_size: int, write_quorum: int, ack_quorum: int) -> bool:
    """Whether the bookies at positions ``responded`` cover every possible ack quorum (BookKeeper's
    quorum coverage): every write set has at least Qw - Qa + 1 of them. Then any entry acknowledged by
    Qa bookies of its write set was seen by at least one of them. With E = Qw this is E - Qa + 1 answers.
    """
    need = write_quorum - ack_quorum + 1
    for start in range(ensemble_size):
        have = sum(1 for pos in write_set(start, ensemble_size, write_quorum) if pos in responded)
        if have < need:
            return False
    return True


class PlacementPolicy(Protocol):
    """Chooses the ensemble of a new ledger."""

    def choose(self, live: Sequence[str], size: int, load: Mapping[str, int]) -> tuple[str, ...]:
        """``size`` distinct bookies among ``live``; ``load`` counts open ledgers per bookie."""
        ...


class LeastLoadedPlacement:
    """The ``size`` live bookies with the fewest open ledgers (ties broken at random), in random order."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - placement, not cryptography

    def choose(self, live: Sequence[str], size: int, load: Mapping[str, int]) -> tuple[str, ...]:
        if len(live) < size:
            raise NotEnoughBookies(f"need {size} bookies for the ensemble, {len(live)} live")
        keyed = sorted(live, key=lambda b: (load.get(b, 0), self._rng.random()))
        chosen = keyed[:size]
        self._rng.shuffle(chosen)
        return tuple(chosen)


class RandomPlacement:
    """``size`` live bookies chosen uniformly at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - placement, not cryptography

    def choose(self, live: Sequence[str], size: int, load: Mapping[str, int]) -> tuple[str, ...]:
        if len(live) < size:
            raise NotEnoughBookies(f"need {size} bookies for the ensemble, {len(live)} live")
        return tuple(self._rng.sample(list(live), size))
