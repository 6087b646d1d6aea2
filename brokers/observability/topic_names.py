"""Log lines name topics, not their ids: a logging filter that puts a topic's name in place of its id.

Partition logs, the offloader and the ledger code know a partition by its topic id (a UUID) — storage cannot
ask the broker's topic registry, and the id is what the keys are built from. An operator reads names, so the
registry tells this module every id -> name it learns, and ``TopicNames``, installed on the process's log
handlers by the command line, rewrites a record's arguments (and an id inside an already formatted message) to
``name`` before the handler formats it. Ids of topics deleted since stay named; the table is bounded.
"""

from __future__ import annotations

import logging
import re

MAX_NAMES = 100_000
_names: dict[str, str] = {}
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def remember(topic_id: str, name: str) -> None:
    """``topic_id`` is ``name`` in log lines from now on."""
    if topic_id not in _names and len(_names) >= MAX_NAMES:
        _names.pop(next(iter(_names)))
    _names[topic_id] = name


def named(text: str) -> str:
    """``text`` with every known topic id replaced by its name."""
    return _UUID.sub(lambda m: _names.get(m.group(0), m.group(0)), text)


class TopicNames(logging.Filter):
    """Replaces known topic ids in a record's arguments and message by topic names (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _names:
            return True
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(named(a) if isinstance(a, str) and len(a) >= 36 else a for a in args)
        if isinstance(record.msg, str) and "-" in record.msg:
            record.msg = named(record.msg)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (the root logger by default)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, TopicNames) for f in handler.filters):
            handler.addFilter(TopicNames())
