"""ACLs against a real ``tidelog run`` process with real clients (issue 16): CreateAcls / DescribeAcls /
DeleteAcls through confluent-kafka's and kafka-python's admin clients, and enforcement for User:ANONYMOUS
(every connection until SASL lands): grant, deny and remove change what a producer, a consumer and Metadata
see, at once and after a restart. Without an authorizer the ACL APIs answer SECURITY_DISABLED, as Kafka does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourcePatternFilter,
)
from kafka.admin import ACLOperation as KpOp
from kafka.admin import ResourceType as KpResourceType

from brokers.cli import main

from .broker_process import BrokerProcess
from .conftest import _finish
from .helpers import create_topic

TIMEOUT = 30.0  # hang guards only
ANON = "User:ANONYMOUS"
OPEN = {"authorizer.class.name": "acl", "allow.everyone.if.no.acl.found": "true"}


@pytest.fixture(scope="module")
def tidelog(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("acls") / "data", configs=OPEN)
    try:
        yield b.start()
    finally:
        _finish(b, request)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create(bootstrap: str, *bindings: AclBinding) -> None:
    client = admin(bootstrap)  # kept alive until the answers are in
    for fut in client.create_acls(list(bindings), request_timeout=TIMEOUT).values():
        fut.result(TIMEOUT)


def describe(bootstrap: str, acl_filter: AclBindingFilter) -> list[AclBinding]:
    client = admin(bootstrap)
    got: list[AclBinding] = client.describe_acls(acl_filter, request_timeout=TIMEOUT).result(TIMEOUT)
    return got


def delete(bootstrap: str, acl_filter: AclBindingFilter) -> list[AclBinding]:
    client = admin(bootstrap)
    (fut,) = client.delete_acls([acl_filter], request_timeout=TIMEOUT).values()
    got: list[AclBinding] = fut.result(TIMEOUT)
    return got


def topic_acl(topic: str, op: AclOperation, perm: AclPermissionType, principal: str = ANON) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, "*", op, perm)


def every_acl_of(topic: str) -> AclBindingFilter:
    return AclBindingFilter(ResourceType.TOPIC, topic, ResourcePatternType.ANY, None, None, AclOperation.ANY,
                            AclPermissionType.ANY)


def produce_error(bootstrap: str, topic: str) -> KafkaError | None:
    """The error of producing one record (None: delivered)."""
    errors: list[KafkaError | None] = []
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 30000, "allow.auto.create.topics": False})
    p.produce(topic, b"v", on_delivery=lambda err, _msg: errors.append(err))
    p.flush(TIMEOUT)
    assert len(errors) == 1
    return errors[0]


def test_deny_write_refuses_produce_until_the_acl_is_deleted(tidelog: BrokerProcess) -> None:
    bootstrap, topic = tidelog.bootstrap, name("deny")
    create_topic(bootstrap, topic)
    assert produce_error(bootstrap, topic) is None  # no ACL names the topic: open (allow.everyone...)
    create(bootstrap, topic_acl(topic, AclOperation.WRITE, AclPermissionType.DENY))
    (seen,) = describe(bootstrap, every_acl_of(topic))
    assert (seen.principal, seen.operation, seen.permission_type) == (ANON, AclOperation.WRITE, AclPermissionType.DENY)
    err = produce_error(bootstrap, topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    (gone,) = delete(bootstrap, every_acl_of(topic))
    assert gone.name == topic and describe(bootstrap, every_acl_of(topic)) == []
    assert produce_error(bootstrap, topic) is None


def test_an_acl_for_someone_else_closes_the_topic_and_hides_it_from_metadata(tidelog: BrokerProcess) -> None:
    bootstrap, topic = tidelog.bootstrap, name("hidden")
    create_topic(bootstrap, topic)
    create(bootstrap, topic_acl(topic, AclOperation.ALL, AclPermissionType.ALLOW, principal="User:alice"))
    assert topic not in admin(bootstrap).list_topics(timeout=TIMEOUT).topics  # ANONYMOUS may not DESCRIBE it
    md = admin(bootstrap).list_topics(topic=topic, timeout=TIMEOUT)
    assert md.topics[topic].error is not None
    assert md.topics[topic].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # granting READ to ANONYMOUS makes it visible (READ implies DESCRIBE) but still not writable
    create(bootstrap, topic_acl(topic, AclOperation.READ, AclPermissionType.ALLOW))
    assert topic in admin(bootstrap).list_topics(timeout=TIMEOUT).topics
    err = produce_error(bootstrap, topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    delete(bootstrap, every_acl_of(topic))


def test_create_topics_needs_create_and_invalid_acls_are_refused(tidelog: BrokerProcess) -> None:
    bootstrap, prefix = tidelog.bootstrap, name("pfx")
    # ANONYMOUS keeps ALTER and DESCRIBE on the cluster (the ACL APIs) but, with ACLs on the cluster now,
    # no longer CREATE there: creating a topic needs CREATE on the topic, which a PREFIXED deny takes away.
    cluster = [
        AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, ANON, "*", op,
                   AclPermissionType.ALLOW)
        for op in (AclOperation.ALTER, AclOperation.DESCRIBE)
    ]
    deny = AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, ANON, "*", AclOperation.CREATE,
                      AclPermissionType.DENY)
    create(bootstrap, *cluster, deny)
    try:
        client = admin(bootstrap)
        (fut,) = client.create_topics([NewTopic(f"{prefix}-x", 1)], operation_timeout=TIMEOUT).values()
        with pytest.raises(KafkaException) as e:
            fut.result(TIMEOUT)
        assert e.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        create_topic(bootstrap, name("other"))  # no ACL names it: CREATE on the topic is open
        bad = AclBinding(ResourceType.BROKER, "not-the-cluster", ResourcePatternType.LITERAL, ANON, "*",
                         AclOperation.ALTER, AclPermissionType.ALLOW)
        with pytest.raises(KafkaException) as e:
            create(bootstrap, bad)
        assert "kafka-cluster" in str(e.value)
    finally:
        by_prefix = AclBindingFilter(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED, None, None,
                                     AclOperation.ANY, AclPermissionType.ANY)
        assert len(delete(bootstrap, by_prefix)) == 1
        on_cluster = AclBindingFilter(ResourceType.BROKER, None, ResourcePatternType.ANY, None, None,
                                      AclOperation.ANY, AclPermissionType.ANY)
        assert len(delete(bootstrap, on_cluster)) == 2


def test_kafka_python_admin_and_acls_survive_a_restart(tmp_path_factory: pytest.TempPathFactory,
                                                       request: pytest.FixtureRequest) -> None:
    b = BrokerProcess(tmp_path_factory.mktemp("acls-restart") / "data", configs=OPEN).start()
    try:
        topic = name("kp")
        create_topic(b.bootstrap, topic)
        kp = KafkaAdminClient(bootstrap_servers=b.bootstrap, request_timeout_ms=int(TIMEOUT * 1000))
        try:
            acl = ACL(ANON, "*", KpOp.WRITE, ACLPermissionType.DENY, ResourcePattern(KpResourceType.TOPIC, topic))
            result = kp.create_acls([acl])
            assert result["failed"] == [] and len(result["succeeded"]) == 1
        finally:
            kp.close()
        b.restart()
        err = produce_error(b.bootstrap, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        kp = KafkaAdminClient(bootstrap_servers=b.bootstrap, request_timeout_ms=int(TIMEOUT * 1000))
        try:
            acl_filter = ACLFilter(None, None, KpOp.ANY, ACLPermissionType.ANY,
                                   ResourcePatternFilter(KpResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL))
            found, _error = kp.describe_acls(acl_filter)
            assert [(a.principal, a.operation) for a in found] == [(ANON, KpOp.WRITE)]
            deleted = kp.delete_acls([acl_filter])
            assert len(deleted[0][1]) == 1
        finally:
            kp.close()
        assert produce_error(b.bootstrap, topic) is None
    finally:
        _finish(b, request)


def test_without_an_authorizer_the_acl_apis_answer_security_disabled(broker: BrokerProcess) -> None:
    with pytest.raises(KafkaException) as e:
        create(broker.bootstrap, topic_acl("t", AclOperation.READ, AclPermissionType.ALLOW))
    assert e.value.args[0].code() == KafkaError.SECURITY_DISABLED


def test_tidelog_acls_cli_add_list_remove(tidelog: BrokerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    bootstrap, topic = tidelog.bootstrap, name("cli")
    create_topic(bootstrap, topic)
    common = ["--bootstrap", bootstrap, "--json"]
    assert main(["acls", "add", *common, "--topic", topic, "--deny-principal", ANON, "--operation", "write"]) == 0
    capsys.readouterr()
    assert main(["acls", "list", *common, "--topic", topic]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["principal"], r["operation"], r["permission"]) for r in listed] == [(ANON, "WRITE", "DENY")]
    err = produce_error(bootstrap, topic)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert main(["acls", "remove", *common, "--topic", topic, "--principal", ANON]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert produce_error(bootstrap, topic) is None
    assert main(["acls", "add", "--bootstrap", bootstrap, "--topic", topic, "--operation", "read"]) == 2
    assert "allow-principal" in capsys.readouterr().err
    bad = ["acls", "add", "--bootstrap", bootstrap, "--cluster", "--resource-pattern-type", "prefixed",
           "--allow-principal", ANON, "--operation", "alter"]
    assert main(bad) == 1
    assert "INVALID_REQUEST" in capsys.readouterr().err
