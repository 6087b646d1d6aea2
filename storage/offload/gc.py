"""Garbage collection of orphan segment objects: objects that no segment key and no live intent name
(a live intent's multipart staging objects, ``NAME.upload-NONCE``, are kept too).

Orphans come from crashes: retention deletes metadata first and objects after, and an offload whose ledger
left the log (DeleteRecords, retention) before its commit leaves its upload behind.

Reading order makes it safe against offloads and retention running at the same time:

1. list the objects (anything uploaded later is not a candidate);
2. read the partition state (which ledgers are in the log);
3. list intents, then 4. list segment keys. An offload commit creates the segment key and deletes its
   intent atomically, so whichever side of the commit step 3 ran on, step 3 or 4 sees the object's name.

An intent is dead when its ledger is no longer in the log (or already offloaded) although the state read
in step 2 knew ledgers at least that new (ledger ids only grow); dead intents are deleted with their
objects. Intents of ledgers newer than the state read are left alone.
"""

from __future__ import annotations

import contextlib
import logging

from metadata.api import MetadataStore, VersionConflict
from metadata.keys import Keys
from metadata.models import OffloadIntent, SegmentRecord
from storage.objectstore.api import ObjectStore
from storage.offload.state import PartitionStateAccess
from storage.segment.format import partition_prefix

log = logging.getLogger(__name__)


async def collect_orphans(
    store: MetadataStore,
    keys: Keys,
    objects: ObjectStore,
    access: PartitionStateAccess,
    topic_id: str,
    partition: int,
) -> list[str]:
    """Delete one partition's orphan objects and dead intents; returns the object keys deleted."""
    listed = await objects.list(partition_prefix(keys.cluster, topic_id, partition))
    state = await access.current()
    intents = await store.list(keys.offload_intents_prefix(topic_id, partition))
    segments = await store.list(keys.segments_prefix(topic_id, partition))

    live_ledgers = {r.ledger_id for r in state.ledgers if not r.offloaded}
    newest_known = max((r.ledger_id for r in state.ledgers), default=-1)
    keep = {SegmentRecord.decode(v.value).object_key for v in segments}
    uploading: list[str] = []  # a live intent's multipart staging objects (S3 store: KEY.upload-NONCE)
    dead_intents: list[tuple[str, int]] = []
    for found in intents:
        intent = OffloadIntent.decode(found.value)
        if intent.ledger_id in live_ledgers or intent.ledger_id > newest_known:
            keep.add(intent.object_key)
            uploading.append(intent.object_key + ".upload-")
        else:
            dead_intents.append((found.key, found.version))
    orphans = [m.key for m in listed if m.key not in keep and not any(m.key.startswith(u) for u in uploading)]
    if orphans:
        await objects.delete(orphans)
        log.info("deleted %d orphan segment objects of %s/%d: %s", len(orphans), topic_id, partition, orphans[:5])
    for key, version in dead_intents:
        with contextlib.suppress(VersionConflict):
            await store.delete(key, expected_version=version)
    return orphans
