"""Ensemble placement and BookKeeper's round-robin distribution schedule.

Placement picks the E bookies of a new ledger among the live ones (``LeastLoadedPlacement``, the default;
``RackAwarePlacement`` spreads the ensemble over racks or zones). The distribution schedule says which
of them store an entry: entry ``e`` goes to ensemble positions ``(e + i) mod E`` for ``i < Qw`` (its write
set), so with E > Qw consecutive entries are striped across the ensemble.
"""

from __future__ import annotations

import itertools
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


DEFAULT_RACK = ""  # the rack of a bookie registered without one (BookKeeper's /default-rack)
PLACEMENTS = ("least-loaded", "rack-aware")  # the names ``placement_named`` (and ``ledger.placement``) take
SEARCH_LIMIT = 7  # RackAwarePlacement searches every order of ensembles up to this size if it must


class PlacementPolicy(Protocol):
    """Chooses the ensemble of a new ledger."""

    def choose(
        self,
        live: Sequence[str],
        size: int,
        load: Mapping[str, int],
        *,
        racks: Mapping[str, str] | None = None,
        write_quorum: int | None = None,
    ) -> tuple[str, ...]:
        """``size`` distinct bookies among ``live``, in ensemble order; ``load`` counts open ledgers per
        bookie, ``racks`` maps a bookie to its rack (missing: DEFAULT_RACK), ``write_quorum`` is the
        ledger's Qw (None: the ensemble size). Raises NotEnoughBookies when it cannot."""
        ...


def placement_named(name: str, rng: random.Random | None = None) -> PlacementPolicy:
    """The policy a ``ledger.placement`` setting names (one of PLACEMENTS); ValueError otherwise."""
    if name == "least-loaded":
        return LeastLoadedPlacement(rng)
    if name == "rack-aware":
        return RackAwarePlacement(rng=rng)
    raise ValueError(f"unknown placement {name!r}; known: {', '.join(PLACEMENTS)}")


class LeastLoadedPlacement:
    """The ``size`` live bookies with the fewest open ledgers (ties broken at random), in random order."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - placement, not cryptography

    def choose(
        self,
        live: Sequence[str],
        size: int,
        load: Mapping[str, int],
        *,
        racks: Mapping[str, str] | None = None,
        write_quorum: int | None = None,
    ) -> tuple[str, ...]:
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

    def choose(
        self,
        live: Sequence[str],
        size: int,
        load: Mapping[str, int],
        *,
        racks: Mapping[str, str] | None = None,
        write_quorum: int | None = None,
    ) -> tuple[str, ...]:
        if len(live) < size:
            raise NotEnoughBookies(f"need {size} bookies for the ensemble, {len(live)} live")
        return tuple(self._rng.sample(list(live), size))


def racks_per_write_set(ensemble: Sequence[str], write_quorum: int, racks: Mapping[str, str]) -> list[int]:
    """For each ensemble position ``p``, how many distinct racks the write set starting there spans."""
    e = len(ensemble)
    rack_at = [racks.get(b, DEFAULT_RACK) for b in ensemble]
    return [len({rack_at[pos] for pos in write_set(start, e, write_quorum)}) for start in range(e)]


class RackAwarePlacement:
    """Ensembles spread over racks, after BookKeeper's RackawareEnsemblePlacementPolicy.

    Members: the racks are taken in turn (the rack whose least-loaded bookie has the fewest open ledgers
    first, ties at random), each giving its least-loaded bookie not yet chosen, until the ensemble is
    full, so the ensemble spans as many racks as there are (up to E) and no rack holds more than its share.
    Order: members of one rack are kept apart, so that every write set (Qw consecutive positions, cyclic)
    spans at least ``min_racks_per_write_set`` racks (capped at Qw) whenever the live racks allow it. When
    they do not, the ensemble is the best effort (fewest write sets short of racks), unless
    ``enforce_min_racks``: then NotEnoughBookies says which racks there are and what was needed.
    Bookies without a rack all count as one rack (DEFAULT_RACK).
    """

    def __init__(
        self,
        *,
        min_racks_per_write_set: int = 2,
        enforce_min_racks: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if min_racks_per_write_set < 1:
            raise ValueError(f"min_racks_per_write_set must be >= 1, got {min_racks_per_write_set}")
        self.min_racks_per_write_set = min_racks_per_write_set
        self.enforce_min_racks = enforce_min_racks
        self._rng = rng or random.Random()  # noqa: S311 - placement, not cryptography

    def choose(
        self,
        live: Sequence[str],
        size: int,
        load: Mapping[str, int],
        *,
        racks: Mapping[str, str] | None = None,
        write_quorum: int | None = None,
    ) -> tuple[str, ...]:
        if len(live) < size:
            raise NotEnoughBookies(f"need {size} bookies for the ensemble, {len(live)} live")
        racks = racks or {}
        qw = size if write_quorum is None else write_quorum
        need = min(self.min_racks_per_write_set, qw)
        by_rack: dict[str, list[str]] = {}
        for bookie in live:
            by_rack.setdefault(racks.get(bookie, DEFAULT_RACK), []).append(bookie)
        if self.enforce_min_racks and len(by_rack) < need:
            raise NotEnoughBookies(
                f"rack-aware placement: every write set of {qw} must span {need} racks, but the {len(live)} live "
                f"bookies are in {len(by_rack)} rack(s): {self._describe(by_rack)}"
            )
        members = self._members(by_rack, size, load)
        ensemble = self._arrange(members, qw, need, racks)
        spans = racks_per_write_set(ensemble, qw, racks)
        if self.enforce_min_racks and min(spans) < need:
            raise NotEnoughBookies(
                f"rack-aware placement: cannot place {size} bookies so that every write set of {qw} spans "
                f"{need} racks; live bookies per rack: {self._describe(by_rack)}"
            )
        shift = self._rng.randrange(size) if size else 0  # a rotation keeps every write set's racks
        return tuple(ensemble[shift:] + ensemble[:shift])

    def _members(self, by_rack: dict[str, list[str]], size: int, load: Mapping[str, int]) -> list[tuple[str, str]]:
        """(rack, bookie) pairs: racks in turn, each giving its next least-loaded bookie."""
        queues = {
            rack: sorted(bookies, key=lambda b: (load.get(b, 0), self._rng.random()))
            for rack, bookies in by_rack.items()
        }
        order = sorted(queues, key=lambda r: (load.get(queues[r][0], 0), self._rng.random()))
        chosen: list[tuple[str, str]] = []
        depth = 0
        while len(chosen) < size:
            for rack in order:
                if depth < len(queues[rack]) and len(chosen) < size:
                    chosen.append((rack, queues[rack][depth]))
            depth += 1
        return chosen

    @staticmethod
    def _arrange(members: list[tuple[str, str]], qw: int, need: int, racks: Mapping[str, str]) -> list[str]:
        """An order of ``members`` keeping each rack's bookies apart: the better of a round-robin over racks
        and a stride placement (largest rack first, into every other position), by their write sets' racks;
        if neither gives every write set ``need`` racks, small ensembles (up to SEARCH_LIMIT) are searched
        exhaustively for an order that does."""
        size = len(members)
        groups: dict[str, list[str]] = {}
        for rack, bookie in members:
            groups.setdefault(rack, []).append(bookie)
        ranked = sorted(groups.values(), key=len, reverse=True)
        round_robin = [g[i] for i in range(len(ranked[0])) for g in ranked if i < len(g)] if ranked else []
        flat = [b for g in ranked for b in g]
        positions = list(range(0, size, 2)) + list(range(1, size, 2))
        stride = [""] * size
        for pos, bookie in zip(positions, flat, strict=True):
            stride[pos] = bookie

        def score(order: list[str]) -> tuple[int, int]:
            spans = racks_per_write_set(order, qw, racks) if order else [0]
            return min(spans), sum(spans)

        best = max((round_robin, stride), key=score)
        if score(best)[0] >= need or not 2 < size <= SEARCH_LIMIT:
            return best
        first, rest = best[0], best[1:]  # rotations are equivalent: fix the first position
        for perm in itertools.permutations(rest):  # at most 6! = 720 orders
            order = [first, *perm]
            if score(order) > score(best):
                best = order
                if score(best)[0] >= need:
                    break
        return best

    @staticmethod
    def _describe(by_rack: Mapping[str, Sequence[str]]) -> str:
        return ", ".join(f"{rack or '(no rack)'}: {len(b)}" for rack, b in sorted(by_rack.items()))
