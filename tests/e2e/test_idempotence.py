"""kafka-python's DEFAULT producer is idempotent (enable_idempotence=True, acks=all in 3.x): it gets a
producer id from InitProducerId and numbers its batches. After it writes, the log holds each record
exactly once, every stored batch carries the producer id/epoch and contiguous sequence numbers, and
the broker's sequence checks behave like Kafka's: a re-sent batch is not stored twice, a sequence gap
is refused with OUT_OF_ORDER_SEQUENCE_NUMBER and the next in-order batch is accepted.
"""

from __future__ import annotations

import time
from collections import Counter

from kafka import KafkaProducer

from . import kafka_wire as kw
from .helpers import confluent_read, high_watermarks, kafka_python_read

PARTS = 2
N = 5000
ERR_OUT_OF_ORDER_SEQUENCE = 45
ERR_DUPLICATE_SEQUENCE = 46


def test_kafka_python_default_producer_is_idempotent_and_exactly_once(module_broker, topic_factory):
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, PARTS, "idem-kp")
    prod = KafkaProducer(bootstrap_servers=bootstrap)  # defaults only
    assert prod.config["enable_idempotence"] is True and prod.config["acks"] == -1
    values = [f"idem-{i:06d}".encode() * 4 for i in range(N)]
    try:
        futs = [prod.send(topic, value=v, key=str(i).encode(), partition=i % PARTS) for i, v in enumerate(values)]
        prod.flush(120)
        metas = [f.get(timeout=120) for f in futs]
    finally:
        prod.close(30)

    # Exactly once: each value once, offsets 0..n-1 per partition, acked offsets agree.
    got = kafka_python_read(bootstrap, topic, PARTS)
    counts = Counter(g.value for g in got)
    assert sorted(counts) == sorted(values)
    assert set(counts.values()) == {1}, f"duplicates: {[v for v, c in counts.items() if c > 1][:5]}"
    stored = {(g.partition, g.offset): g.value for g in got}
    for m, v in zip(metas, values, strict=True):
        assert stored[(m.partition, m.offset)] == v

    # On the wire: every batch is an idempotent batch of ONE producer id/epoch, sequences tile 0,1,2...
    for p in range(PARTS):
        batches = kw.fetch_all_batches(bootstrap, topic, p)
        assert batches, f"partition {p}: no batches"
        pids = {(b.producer_id, b.producer_epoch) for b in batches}
        assert len(pids) == 1, f"partition {p}: several producer ids/epochs {pids}"
        ((pid, epoch),) = pids
        assert pid >= 0 and epoch >= 0, f"partition {p}: batches not idempotent (producer id {pid}, epoch {epoch})"
        seq = 0
        for b in batches:
            assert b.crc_ok
            assert b.base_sequence == seq, (
                f"partition {p} batch at {b.base_offset}: sequence {b.base_sequence} != {seq}"
            )
            assert b.base_offset == seq, "one producer from offset 0: offsets and sequences coincide"
            seq += b.last_offset_delta + 1
        assert seq == N // PARTS


def test_sequence_checks_on_raw_produce(module_broker, topic_factory):
    """Re-send the producer's last batch byte for byte (what a retry after a lost response does)."""
    bootstrap = module_broker.bootstrap
    topic = topic_factory(bootstrap, 1, "idem-raw")
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for i in range(200):
            prod.send(topic, value=f"r{i}".encode(), partition=0)
        prod.flush(60)
    finally:
        prod.close(30)

    batches = kw.fetch_all_batches(bootstrap, topic, 0)
    last = batches[-1]
    pid, epoch = last.producer_id, last.producer_epoch
    end = last.base_offset + last.last_offset_delta + 1
    assert end == 200

    with kw.connect(bootstrap) as s:
        version = kw.pick_version(kw.api_versions(s), kw.API_PRODUCE, 3, 12)

        def send(batch: bytes, corr: int) -> kw.ProducePartitionResult:
            s.sendall(kw.produce_request(version, topic, 0, batch, corr))
            r = kw.parse_produce_response(version, kw.recv_frame(s))
            assert r.correlation_id == corr
            return r

        # 1. The last batch again, same pid/epoch/sequence: acknowledged, not appended twice.
        r = send(last.as_sent_by_client(), 1)
        assert r.error_code in (kw.ERR_NONE, ERR_DUPLICATE_SEQUENCE), f"duplicate batch: {r}"
        if r.error_code == kw.ERR_NONE:
            assert r.base_offset == last.base_offset, (
                f"duplicate acked at {r.base_offset}, original at {last.base_offset}"
            )
        assert high_watermarks(bootstrap, topic, [0])[0][1] == end, "the duplicate batch was appended"

        ts = int(time.time() * 1000)
        # 2. A gap in the sequence: refused.
        gap = kw.record_batch(
            [kw.Record(None, b"gap")], ts, producer_id=pid, producer_epoch=epoch, base_sequence=end + 5
        )
        r = send(gap, 2)
        assert r.error_code == ERR_OUT_OF_ORDER_SEQUENCE, f"sequence gap: {r} (want OUT_OF_ORDER_SEQUENCE_NUMBER)"
        assert high_watermarks(bootstrap, topic, [0])[0][1] == end

        # 3. The next sequence: accepted right at the end of the log.
        nxt = kw.record_batch([kw.Record(None, b"next")], ts, producer_id=pid, producer_epoch=epoch, base_sequence=end)
        r = send(nxt, 3)
        assert (r.error_code, r.base_offset) == (kw.ERR_NONE, end), f"in-order batch: {r}"

    got = confluent_read(bootstrap, topic, [0], start=0)
    assert [g.value for g in got] == [f"r{i}".encode() for i in range(200)] + [b"next"]
