"""`__consumer_offsets` is the broker's own: clients can see it but not produce to, delete or grow it."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from .broker_process import BrokerProcess

INTERNAL = "__consumer_offsets"


def test_internal_topic_is_listed_but_refuses_writes_deletes_and_growth(broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topics = admin.list_topics(timeout=30).topics
    assert INTERNAL in topics and len(topics[INTERNAL].partitions) == 50

    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "retries": 0})
    producer.produce(INTERNAL, value=b"not a group record", partition=0, on_delivery=lambda e, m: errors.append(e))
    assert producer.flush(30) == 0
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.TOPIC_EXCEPTION

    deleted = admin.delete_topics([INTERNAL])[INTERNAL]
    grown = admin.create_partitions([NewPartitions(INTERNAL, 60)])[INTERNAL]
    for future in (deleted, grown):
        try:
            future.result(30)
        except KafkaException as e:
            assert e.args[0].code() == KafkaError.INVALID_REQUEST
        else:
            raise AssertionError("the broker accepted a change to its internal topic")
    assert len(admin.list_topics(timeout=30).topics[INTERNAL].partitions) == 50
