"""Log lines name topics, not their ids (issue 12): the filter the command line installs."""

from __future__ import annotations

import logging

import pytest

from brokers.observability import topic_names

TOPIC_ID = "0b6c7a58-35a2-4d3f-9c55-8e1f2d3a4b5c"


def test_ids_become_names_in_arguments_and_messages(caplog: pytest.LogCaptureFixture) -> None:
    topic_names.remember(TOPIC_ID, "orders")
    logger = logging.getLogger("tidelog.test.names")
    caplog.handler.addFilter(topic_names.TopicNames())
    with caplog.at_level(logging.INFO):
        logger.info("offloaded ledger %d of %s/%d", 7, TOPIC_ID, 3)
        logger.info(f"already formatted: {TOPIC_ID}/1")  # an already formatted message: the filter handles these too
        logger.info("unknown id %s stays", "11111111-2222-3333-4444-555555555555")
    assert [r.getMessage() for r in caplog.records] == [
        "offloaded ledger 7 of orders/3",
        "already formatted: orders/1",
        "unknown id 11111111-2222-3333-4444-555555555555 stays",
    ]
