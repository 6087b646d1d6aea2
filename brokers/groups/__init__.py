"""Consumer groups: the group coordinator, its ``__consumer_offsets`` shards, and the classic protocol."""
