"""Offloaded data is served by a broker that never wrote it (issue 5: "any broker can serve offloaded data").

Broker A writes a topic with small ledgers to moto S3 until every record is in a segment and every ledger is
deleted from its bookie, then stops. Broker B is another process with another node id, its own empty data
directory (no bookie journal, no caches) and only two things in common with A: the metadata (A's metadata
store copied, standing in for the etcd both would share in a cluster) and the object store URL. B serves the
whole topic byte-exact from offset 0, by timestamp from the middle, and takes new records at the tail with
the offsets continuing. The read path of offloaded data needs metadata and the object store, nothing of the
broker that offloaded it.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from tests.moto_server import MotoServer

from .broker_process import BrokerProcess
from .helpers import assert_acks_in_order, assert_same_records, confluent_produce, confluent_read, create_topic
from .test_rollover import PARTS, STEP_MS, check_offsets_for_times, check_tail, increasing_records
from .test_tiered import SMALL, tier_offsets, wait_all_offloaded

BUCKET = "tidelog-any-broker"  # the conftest's moto fixture creates it


def test_a_broker_with_only_metadata_and_the_object_store_serves_offloaded_data(
    tmp_path: Path, moto: MotoServer
) -> None:
    url = moto.s3_url(BUCKET, f"t-{uuid.uuid4().hex[:8]}")
    writer = BrokerProcess(tmp_path / "a" / "data", configs=SMALL, extra_args=["--object-store", url])
    reader = BrokerProcess(
        tmp_path / "b" / "data", configs=SMALL, extra_args=["--object-store", url, "--node-id", "1"]
    )
    try:
        writer.start()
        topic = f"any-{uuid.uuid4().hex[:8]}"
        create_topic(writer.bootstrap, topic, PARTS)
        base_ts = int(time.time() * 1000) - 86_400_000
        recs = increasing_records(3000, base_ts)
        acked = confluent_produce(writer.bootstrap, topic, recs, **{"linger.ms": 5, "batch.size": 16384})
        assert_acks_in_order(recs, acked, "writer")
        wait_all_offloaded(writer.bootstrap, topic)
        ends = {p: hw for p, (_tiered, _local, hw) in tier_offsets(writer.bootstrap, topic).items()}
        assert sum(ends.values()) == len(recs)
        writer.stop()

        shutil.copytree(writer.data_dir / "metadata", reader.data_dir / "metadata")
        reader.start()
        assert not any((reader.data_dir / "objects").glob("**/*.seg"))  # nothing local: all from S3
        assert_same_records(recs, confluent_read(reader.bootstrap, topic, range(PARTS), start=0), PARTS, "from 0")
        check_offsets_for_times(reader, topic, recs)  # by timestamp from the segments, then from the middle
        check_tail(reader, topic, base_ts + len(recs) * STEP_MS, "reader-tail")  # offsets continue at B
        after = tier_offsets(reader.bootstrap, topic)
        assert all(after[p][2] > ends[p] for p in range(PARTS))
    finally:
        writer.close()
        reader.close()
