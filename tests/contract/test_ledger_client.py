"""The LedgerClient contract: every implementation and quorum configuration must pass every test here.

The fixtures (ledger_fixtures.py) run each test on one bookie with E=Qw=Qa=1, on three with E=3, Qw=3, Qa=2
and on three with E=3, Qw=Qa=2, each reached in-process and over TCP. Waits only time out when something
that must happen never does.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from metadata.api import EventKind
from storage.ledger.api import (
    LedgerClosed,
    LedgerError,
    LedgerFenced,
    LedgerState,
    NoSuchEntry,
    NoSuchLedger,
    NotEnoughBookies,
)
from storage.ledger.client import QuorumLedgerClient, QuorumLedgerWriter, decode_ledger_info
from storage.ledger.placement import racks_per_write_set, write_set
from tests.contract.ledger_fixtures import RACKS, LedgerEnv, ledger_client, ledger_env, rack_env

__all__ = ["ledger_client", "ledger_env", "rack_env"]

WAIT = 30.0


def payload(ledger_id: int, entry_id: int, size: int = 100) -> bytes:
    head = f"{ledger_id}:{entry_id}:".encode()
    return (head * (size // len(head) + 1))[:size]


async def new_writer(env: LedgerEnv, client: QuorumLedgerClient | None = None) -> QuorumLedgerWriter:
    return await (client or env.client).create_ledger(*env.quorum)


async def append_all(writer: QuorumLedgerWriter, entries: list[bytes]) -> list[int]:
    return list(await asyncio.wait_for(asyncio.gather(*(writer.append(e) for e in entries)), WAIT))


# --- writing ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_create_append_confirms_in_order(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    assert writer.last_add_confirmed == -1
    for i in range(10):
        assert await writer.append(payload(writer.ledger_id, i)) == i
        assert writer.last_add_confirmed == i
    assert writer.length == 10 * 100
    info = await ledger_env.client.ledger_info(writer.ledger_id)
    assert info is not None
    assert info.state is LedgerState.OPEN
    assert len(info.ensemble) == ledger_env.quorum[0]
    assert len(set(info.ensemble)) == len(info.ensemble)
    assert (info.write_quorum, info.ack_quorum) == ledger_env.quorum[1:]
    assert set(info.ensemble) <= set(ledger_env.client.live_bookies)


@pytest.mark.asyncio
async def test_pipelined_appends_confirm_in_entry_order(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    confirmed: list[int] = []
    futures = []
    for i in range(1000):
        fut = writer.append(payload(writer.ledger_id, i, 1 + i % 300))
        fut.add_done_callback(lambda f: confirmed.append(f.result()))
        futures.append(fut)
    assert len(futures) == 1000  # all 1,000 in flight before any is confirmed
    ids = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    assert list(ids) == list(range(1000))
    assert confirmed == list(range(1000))
    assert writer.last_add_confirmed == 999
    reader = await ledger_env.client.open_ledger(writer.ledger_id, recover=False)
    got = await reader.read(0, 999)
    assert got == [payload(writer.ledger_id, i, 1 + i % 300) for i in range(1000)]


@pytest.mark.asyncio
async def test_read_ranges(ledger_env: LedgerEnv) -> None:
    rng = random.Random(7)
    writer = await new_writer(ledger_env)
    entries = [payload(writer.ledger_id, i, rng.randrange(0, 5000)) for i in range(200)]
    entries[3] = b""  # empty entries are entries too
    await append_all(writer, entries)
    reader = await ledger_env.client.open_ledger(writer.ledger_id, recover=False)
    assert reader.info.state is LedgerState.OPEN
    assert await reader.read(0, 199) == entries
    assert await reader.read(10, 20) == entries[10:21]
    assert await reader.read(5, 5) == [entries[5]]
    with pytest.raises(NoSuchEntry):
        await reader.read(200, 200)  # never written
    await writer.close()
    closed = await ledger_env.client.open_ledger(writer.ledger_id)
    assert await closed.read(150, 199) == entries[150:]
    with pytest.raises(ValueError):
        await closed.read(5, 4)


@pytest.mark.asyncio
async def test_last_add_confirmed(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    reader = await ledger_env.client.open_ledger(writer.ledger_id, recover=False)
    assert await reader.read_last_add_confirmed() == -1
    for i in range(20):
        await writer.append(payload(writer.ledger_id, i))
    assert writer.last_add_confirmed == 19
    lac = await reader.read_last_add_confirmed()
    # bookies learn the LAC piggybacked on later adds: it trails the writer (here by the last entry)
    assert 18 <= lac <= 19
    assert await reader.read(0, lac) == [payload(writer.ledger_id, i) for i in range(lac + 1)]
    await writer.close()
    assert await reader.read_last_add_confirmed() == 19


# --- closing ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_close_records_last_entry_and_length(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    entries = [payload(writer.ledger_id, i, 10 + i) for i in range(10)]
    await append_all(writer, entries)
    assert await writer.close() == 9
    assert await writer.close() == 9  # idempotent
    info = await ledger_env.client.ledger_info(writer.ledger_id)
    assert info is not None
    assert info.state is LedgerState.CLOSED
    assert info.last_entry_id == 9
    assert info.length == sum(len(e) for e in entries)
    with pytest.raises(LedgerClosed):
        writer.append(b"late")
    reader = await ledger_env.client.open_ledger(writer.ledger_id)
    assert reader.info == info
    assert await reader.read(0, 9) == entries
    with pytest.raises(NoSuchEntry):
        await reader.read(5, 10)  # past the last entry of a closed ledger
    with pytest.raises(NoSuchEntry):
        await reader.read(10, 10)


@pytest.mark.asyncio
async def test_close_waits_for_appends_in_flight(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    futures = [writer.append(payload(writer.ledger_id, i)) for i in range(300)]
    assert await asyncio.wait_for(writer.close(), WAIT) == 299
    assert all(f.done() and f.result() == i for i, f in enumerate(futures))


@pytest.mark.asyncio
async def test_empty_ledgers_close_at_minus_one(ledger_env: LedgerEnv) -> None:
    closed = await new_writer(ledger_env)
    assert await closed.close() == -1
    info = await ledger_env.client.ledger_info(closed.ledger_id)
    assert info is not None and (info.state, info.last_entry_id, info.length) == (LedgerState.CLOSED, -1, 0)
    abandoned = await new_writer(ledger_env)  # its writer dies before writing anything
    reader = await ledger_env.new_client().open_ledger(abandoned.ledger_id)
    assert (reader.info.state, reader.info.last_entry_id, reader.info.length) == (LedgerState.CLOSED, -1, 0)
    with pytest.raises(NoSuchEntry):
        await reader.read(0, 0)


# --- recovery and fencing ---------------------------------------------------------------------
@pytest.mark.asyncio
async def test_recovery_fences_the_writer(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    entries = [payload(writer.ledger_id, i) for i in range(10)]
    await append_all(writer, entries)
    other = ledger_env.new_client()
    reader = await other.open_ledger(writer.ledger_id, recover=True)
    assert reader.info.state is LedgerState.CLOSED
    assert reader.info.last_entry_id == 9
    assert reader.info.length == sum(len(e) for e in entries)
    assert await reader.read(0, 9) == entries

    with pytest.raises(LedgerFenced):
        await asyncio.wait_for(writer.append(b"after the fence"), WAIT)
    with pytest.raises(LedgerFenced):  # unusable from now on
        await asyncio.wait_for(writer.append(b"again"), WAIT)
    assert writer.last_add_confirmed == 9
    with pytest.raises(LedgerFenced):
        await writer.close()
    info = await other.ledger_info(writer.ledger_id)
    assert info is not None and info.last_entry_id == 9 and info.state is LedgerState.CLOSED


@pytest.mark.asyncio
async def test_fenced_writer_never_confirms_again(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    await append_all(writer, [payload(writer.ledger_id, i) for i in range(5)])
    await ledger_env.new_client().open_ledger(writer.ledger_id)
    late = []
    for i in range(50):
        try:
            late.append(writer.append(payload(writer.ledger_id, 5 + i)))
        except LedgerFenced:
            break
    results = await asyncio.wait_for(asyncio.gather(*late, return_exceptions=True), WAIT)
    assert results and all(isinstance(r, LedgerFenced) for r in results)
    assert writer.last_add_confirmed == 4
    reader = await ledger_env.client.open_ledger(writer.ledger_id)
    assert reader.info.last_entry_id == 4
    with pytest.raises(NoSuchEntry):
        await reader.read(5, 5)


@pytest.mark.asyncio
async def test_recovery_of_a_writer_that_died_with_entries_in_flight(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    info = writer.info
    e, qw, qa = len(info.ensemble), info.write_quorum, info.ack_quorum
    transports = [ledger_env.transport(b) for b in info.ensemble]
    # From entry 60 on the writer hears no acks (as if it had crashed); entries 60..79 reach an ack
    # quorum of their write set (its first Qa bookies) and nothing from 80 on is delivered.
    for pos, t in enumerate(transports):
        t.hold_acks_from = 60
        t.drop_adds = lambda entry_id, pos=pos: entry_id >= 80 or (
            entry_id >= 60 and pos not in write_set(entry_id, e, qw)[:qa]
        )
    last_holder = transports[write_set(79, e, qw)[0]]
    entries = [payload(writer.ledger_id, i, 500) for i in range(100)]
    futures = [writer.append(e) for e in entries]
    await asyncio.wait_for(asyncio.gather(*futures[:60]), WAIT)
    # wait until a bookie has stored entry 79 (its ack is held, not its write)
    for _ in range(2000):
        try:
            await last_holder.inner.read(writer.ledger_id, 79)
            break
        except LedgerError:
            await asyncio.sleep(0.005)
    assert writer.last_add_confirmed == 59
    assert not any(f.done() for f in futures[60:])

    other = ledger_env.new_client()
    reader = await other.open_ledger(writer.ledger_id, recover=True)
    # every confirmed entry survives, and so does every entry an ack quorum holds
    assert reader.info.state is LedgerState.CLOSED
    assert reader.info.last_entry_id == 79
    assert reader.info.length == 80 * 500
    assert await reader.read(0, 79) == entries[:80]
    # recovered entries were re-replicated to their whole write set (ack quorum at least)
    for entry_id in range(60, 80):
        copies = 0
        for bookie_id in info.ensemble:
            try:
                got = await ledger_env.transport(bookie_id).inner.read(writer.ledger_id, entry_id)
                copies += got.payload == entries[entry_id]
            except NoSuchEntry:
                pass
        assert copies >= info.ack_quorum
    # the dead writer's connections finally drop: none of its in-flight entries is ever confirmed
    for t in transports:
        t.release()
    late = await asyncio.wait_for(asyncio.gather(*futures[60:], return_exceptions=True), WAIT)
    assert all(isinstance(r, LedgerError) for r in late)
    assert writer.last_add_confirmed == 59


@pytest.mark.asyncio
async def test_open_without_recovery_neither_fences_nor_closes(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    await append_all(writer, [payload(writer.ledger_id, i) for i in range(5)])
    reader = await ledger_env.new_client().open_ledger(writer.ledger_id, recover=False)
    assert reader.info.state is LedgerState.OPEN
    assert await reader.read(0, 4) == [payload(writer.ledger_id, i) for i in range(5)]
    assert await writer.append(b"still writable") == 5
    assert await reader.read(5, 5) == [b"still writable"]  # unconfirmed reads are allowed while open
    assert await writer.close() == 5


@pytest.mark.asyncio
async def test_concurrent_recoveries_agree(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    await append_all(writer, [payload(writer.ledger_id, i) for i in range(30)])
    a, b = ledger_env.new_client(), ledger_env.new_client()
    ra, rb = await asyncio.wait_for(
        asyncio.gather(a.open_ledger(writer.ledger_id), b.open_ledger(writer.ledger_id)), WAIT
    )
    assert ra.info.state is rb.info.state is LedgerState.CLOSED
    assert ra.info.last_entry_id == rb.info.last_entry_id == 29


# --- metadata -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_metadata_state_transitions(ledger_env: LedgerEnv) -> None:
    store, keys = ledger_env.store, ledger_env.keys
    first = await new_writer(ledger_env)
    second = await new_writer(ledger_env)
    assert second.ledger_id > first.ledger_id
    key = keys.ledger(first.ledger_id)
    created = await store.get(key)
    assert created is not None and decode_ledger_info(created.value).state is LedgerState.OPEN
    await append_all(first, [b"x", b"yy", b"zzz"])

    watch = store.watch(key, from_revision=created.version + 1)
    await ledger_env.new_client().open_ledger(first.ledger_id)
    states: list[LedgerState] = []
    while not states or states[-1] is not LedgerState.CLOSED:
        event = await asyncio.wait_for(anext(watch), WAIT)
        assert event.kind is EventKind.PUT and event.value is not None
        states.append(decode_ledger_info(event.value).state)
    assert states == [LedgerState.IN_RECOVERY, LedgerState.CLOSED]
    final = await ledger_env.client.ledger_info(first.ledger_id)
    assert final is not None and (final.last_entry_id, final.length) == (2, 6)

    await second.close()
    info = await ledger_env.client.ledger_info(second.ledger_id)
    assert info is not None and info.state is LedgerState.CLOSED


# --- deletion -------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_delete_ledger_makes_reads_fail(ledger_env: LedgerEnv) -> None:
    client = ledger_env.client
    writer = await new_writer(ledger_env)
    keep = await new_writer(ledger_env)
    await append_all(writer, [payload(writer.ledger_id, i) for i in range(20)])
    await append_all(keep, [payload(keep.ledger_id, i) for i in range(20)])
    await writer.close()
    await keep.close()
    reader = await client.open_ledger(writer.ledger_id)
    await client.delete_ledger(writer.ledger_id)
    assert await client.ledger_info(writer.ledger_id) is None
    with pytest.raises(NoSuchLedger):
        await client.open_ledger(writer.ledger_id)
    with pytest.raises((NoSuchLedger, NoSuchEntry)):
        await reader.read(0, 0)
    with pytest.raises(NoSuchLedger):
        await client.delete_ledger(writer.ledger_id)
    kept = await client.open_ledger(keep.ledger_id)
    assert await kept.read(0, 19) == [payload(keep.ledger_id, i) for i in range(20)]


# --- faults ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_corrupt_entry_is_read_from_another_replica(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    entries = [payload(writer.ledger_id, i, 1000) for i in range(10)]
    await append_all(writer, entries)
    await writer.close()
    reader = await ledger_env.client.open_ledger(writer.ledger_id)
    info = reader.info
    holders = [info.ensemble[p] for p in write_set(3, len(info.ensemble), info.write_quorum)]
    if len(holders) == 1:  # one copy: corruption is detected, never served
        await ledger_env.corrupt(holders[0], writer.ledger_id, 3)
        with pytest.raises(LedgerError, match="CRC"):
            await reader.read(3, 3)
        assert await reader.read(4, 9) == entries[4:]
        return
    for bookie_id in holders[:-1]:  # every copy but one is damaged
        await ledger_env.corrupt(bookie_id, writer.ledger_id, 3)
    await ledger_env.wait_stored(holders[-1], writer.ledger_id, 3)  # the good copy may be still on its way
    assert await reader.read(0, 9) == entries
    assert await reader.read(3, 3) == [entries[3]]
    await ledger_env.corrupt(holders[-1], writer.ledger_id, 3)
    with pytest.raises(LedgerError, match="CRC"):
        await reader.read(3, 3)


@pytest.mark.asyncio
async def test_appends_fail_without_an_ack_quorum(ledger_env: LedgerEnv) -> None:
    writer = await new_writer(ledger_env)
    assert await writer.append(b"first") == 0
    ensemble, write_quorum, ack_quorum = ledger_env.quorum
    for pos in write_set(1, ensemble, write_quorum)[: write_quorum - ack_quorum + 1]:
        ledger_env.client.remove_bookie(writer.info.ensemble[pos])
    with pytest.raises(NotEnoughBookies):
        await asyncio.wait_for(writer.append(b"second"), WAIT)
    with pytest.raises(NotEnoughBookies):  # nothing later can be confirmed in order
        await asyncio.wait_for(writer.append(b"third"), WAIT)
    assert writer.last_add_confirmed == 0
    assert await writer.close() == 0  # closes at what was confirmed


@pytest.mark.asyncio
async def test_losing_fewer_than_the_spare_bookies_keeps_writing(ledger_env: LedgerEnv) -> None:
    _ensemble, write_quorum, ack_quorum = ledger_env.quorum
    if write_quorum == ack_quorum:
        pytest.skip("no spare replica in this configuration")
    writer = await new_writer(ledger_env)
    ledger_env.client.remove_bookie(writer.info.ensemble[0])
    assert await append_all(writer, [b"a", b"b", b"c"]) == [0, 1, 2]


@pytest.mark.asyncio
async def test_create_ledger_checks_quorums_and_live_bookies(ledger_client: QuorumLedgerClient) -> None:
    with pytest.raises(ValueError):
        await ledger_client.create_ledger(1, 2, 1)
    with pytest.raises(ValueError):
        await ledger_client.create_ledger(1, 1, 0)
    with pytest.raises(NotEnoughBookies):
        await ledger_client.create_ledger(len(ledger_client.live_bookies) + 1, 1, 1)
    with pytest.raises(NoSuchLedger):
        await ledger_client.open_ledger(987654)
    assert await ledger_client.ledger_info(987654) is None


# --- rack-aware placement (six bookies: three in rack-a, two in rack-b, one in rack-c) -------------------
@pytest.mark.asyncio
async def test_rack_aware_ensembles_span_racks(rack_env: LedgerEnv) -> None:
    client = rack_env.rack_client
    assert client is not None
    assert {b: client.rack_of(b) for b in client.live_bookies} == RACKS  # over TCP: from the registrations
    writers = [await client.create_ledger(3, 2, 2) for _ in range(9)]
    used: set[str] = set()
    for writer in writers:
        stored = await client.ledger_info(writer.ledger_id)
        assert stored is not None and stored.ensemble == writer.info.ensemble
        ensemble = stored.ensemble
        assert {RACKS[b] for b in ensemble} == {"rack-a", "rack-b", "rack-c"}
        assert min(racks_per_write_set(ensemble, 2, RACKS)) == 2  # every entry lands on two racks
        used |= set(ensemble)
    assert "bookie-5" in used and len(used) == len(RACKS)  # least-loaded within each rack spreads the load
    # the ensembles work: every entry is written to two racks and reads back from another client
    for writer in writers[:3]:
        entries = [payload(writer.ledger_id, i) for i in range(40)]
        assert await append_all(writer, entries) == list(range(40))
        assert await writer.close() == 39
        reader = await rack_env.client.open_ledger(writer.ledger_id)
        assert await reader.read(0, 39) == entries
        for entry_id in (0, 1, 2):
            positions = write_set(entry_id, 3, 2)
            assert len({RACKS[writer.info.ensemble[p]] for p in positions}) == 2


@pytest.mark.asyncio
async def test_rack_aware_placement_refuses_when_racks_are_gone(rack_env: LedgerEnv) -> None:
    client = rack_env.rack_client
    assert client is not None
    client.remove_bookie("bookie-5")  # rack-c is down: rack-a has 3 live bookies, rack-b 2
    with pytest.raises(NotEnoughBookies, match="every write set of 2 spans 2 racks"):
        await client.create_ledger(3, 2, 2)  # two of three bookies share a rack: some write set is one rack
    for quorum in [(4, 2, 2), (3, 3, 2)]:  # alternating racks; or every write set is the whole ensemble
        writer = await client.create_ledger(*quorum)
        assert min(racks_per_write_set(writer.info.ensemble, quorum[1], RACKS)) == 2
        assert await append_all(writer, [b"x", b"y", b"z"]) == [0, 1, 2]
        assert await writer.close() == 2
    client.remove_bookie("bookie-3")
    client.remove_bookie("bookie-4")  # only rack-a is left
    with pytest.raises(NotEnoughBookies, match=r"must span 2 racks.*rack-a: 3"):
        await client.create_ledger(3, 3, 2)
    client.add_bookie(rack_env.transport("bookie-3").inner)  # it comes back, its rack still known
    writer = await client.create_ledger(3, 3, 2)
    assert "bookie-3" in writer.info.ensemble
