"""KIP-848 records of __consumer_offsets (key versions 3..8): Kafka's byte layout, round trips, bad bytes."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.groups.assignors import TopicInfo
from brokers.groups.consumer_records import (
    KEY_VERSIONS,
    ConsumerRecord,
    CurrentAssignment,
    CurrentAssignmentRecord,
    GroupEpochRecord,
    MemberSubscription,
    MemberSubscriptionRecord,
    RecordFormatError,
    SubscriptionMetadataRecord,
    TargetEpochRecord,
    TargetMemberRecord,
    decode,
    encode,
    key_version,
)

T1 = str(uuid.UUID(int=0x0102030405060708090A0B0C0D0E0F10))
T2 = str(uuid.uuid4())


def test_group_epoch_bytes_are_kafkas() -> None:
    key, value = encode(GroupEpochRecord("g", 5))
    assert key == b"\x00\x03\x00\x01g"  # int16 version 3, int16-length group id
    assert value == b"\x00\x00" + b"\x00\x00\x00\x05" + b"\x00"  # value version 0, epoch, no tagged fields


def test_target_member_bytes_are_kafkas() -> None:
    key, value = encode(TargetMemberRecord("g", "m", frozenset({(T1, 2), (T1, 0)})))
    assert key == b"\x00\x07\x00\x01g\x00\x01m"
    topic = uuid.UUID(T1).bytes
    # compact array of 1 topic: uuid, compact array of 2 int32 (sorted), empty tags; then the struct's tags
    assert value == b"\x00\x00" + b"\x02" + topic + b"\x03\x00\x00\x00\x00\x00\x00\x00\x02" + b"\x00" + b"\x00"


SAMPLES: list[ConsumerRecord] = [
    GroupEpochRecord("group-1", 7),
    SubscriptionMetadataRecord("group-1", (TopicInfo(T1, "orders", 6), TopicInfo(T2, "payments", 1))),
    MemberSubscriptionRecord(
        "group-1",
        "member-ü",
        MemberSubscription("inst-1", "rack-a", "client", "/127.0.0.1", ("orders", "payments"), "pay.*", 30000, "range"),
    ),
    MemberSubscriptionRecord("group-1", "member-2", MemberSubscription(client_id="c", client_host="h")),
    TargetEpochRecord("group-1", 7),
    TargetMemberRecord("group-1", "member-2", frozenset({(T1, 0), (T1, 5), (T2, 0)})),
    TargetMemberRecord("group-1", "member-3", frozenset()),
    CurrentAssignmentRecord(
        "group-1", "member-2", CurrentAssignment(7, 6, 1, frozenset({(T1, 0)}), frozenset({(T1, 3), (T2, 0)}))
    ),
]
TOMBSTONES: list[ConsumerRecord] = [
    GroupEpochRecord("g", None),
    SubscriptionMetadataRecord("g", None),
    MemberSubscriptionRecord("g", "m", None),
    TargetEpochRecord("g", None),
    TargetMemberRecord("g", "m", None),
    CurrentAssignmentRecord("g", "m", None),
]


@pytest.mark.parametrize("record", SAMPLES + TOMBSTONES, ids=lambda r: type(r).__name__)
def test_round_trip(record: ConsumerRecord) -> None:
    key, value = encode(record)
    assert key_version(key) in KEY_VERSIONS
    assert (value is None) == (record in TOMBSTONES)
    assert decode(key, value) == record


def test_key_versions_are_three_to_eight() -> None:
    assert sorted(key_version(encode(r)[0]) for r in TOMBSTONES) == [3, 4, 5, 6, 7, 8]


def test_unknown_tagged_fields_are_skipped() -> None:
    key, value = encode(GroupEpochRecord("g", 9))
    assert value is not None
    tagged = value[:-1] + b"\x01" + b"\x00" + b"\x08" + b"\x00" * 8  # one tagged field (tag 0, 8 bytes)
    assert decode(key, tagged) == GroupEpochRecord("g", 9)


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_truncated_values_are_refused(record: ConsumerRecord) -> None:
    key, value = encode(record)
    assert value is not None
    for cut in range(len(value)):
        with pytest.raises(RecordFormatError):
            decode(key, value[:cut])


def test_bad_keys_and_versions_are_refused() -> None:
    with pytest.raises(RecordFormatError):
        decode(b"\x00\x01\x00\x01g", b"")  # key version 1 is an offset commit, not ours
    with pytest.raises(RecordFormatError):
        decode(b"\x00\x03\x00\x05g", None)  # group id runs past the end
    with pytest.raises(RecordFormatError):
        decode(b"\x00\x03\x00\x01g", b"\x00\x01\x00\x00\x00\x01\x00")  # value version 1 is unknown
    with pytest.raises(RecordFormatError):
        key_version(b"\x00")


names = st.text(min_size=0, max_size=20)
tps = st.frozensets(st.tuples(st.sampled_from([T1, T2]), st.integers(0, 2**31 - 1)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    group=names, member=names, instance=st.none() | names, topics=st.lists(names, max_size=5),
    epoch=st.integers(-2, 2**31 - 1), state=st.sampled_from([0, 1, 2, 127]), assigned=tps, revoking=tps,
)
def test_property_round_trip(
    group: str, member: str, instance: str | None, topics: list[str], epoch: int, state: int,
    assigned: frozenset[tuple[str, int]], revoking: frozenset[tuple[str, int]],
) -> None:
    for record in (
        MemberSubscriptionRecord(group, member, MemberSubscription(instance, None, member, group, tuple(topics))),
        CurrentAssignmentRecord(group, member, CurrentAssignment(epoch, epoch - 1, state, assigned, revoking)),
        TargetMemberRecord(group, member, assigned),
    ):
        assert decode(*encode(record)) == record
