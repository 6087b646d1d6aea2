"""Ledger metadata as stored in the MetadataStore: a versioned msgpack map (see docs/data-formats.md)."""

from __future__ import annotations

from typing import Any

import msgpack

from storage.ledger.api import LedgerInfo, LedgerState

INFO_FORMAT = 1


def encode_ledger_info(info: LedgerInfo) -> bytes:
    """LedgerInfo as stored in the metadata store (a msgpack map)."""
    data: bytes = msgpack.packb(
        {
            "v": INFO_FORMAT,
            "id": info.ledger_id,
            "ensemble": list(info.ensemble),
            "qw": info.write_quorum,
            "qa": info.ack_quorum,
            "state": info.state.value,
            "last": info.last_entry_id,
            "length": info.length,
        },
        use_bin_type=True,
    )
    return data


def decode_ledger_info(data: bytes) -> LedgerInfo:
    d: Any = msgpack.unpackb(data, raw=False)
    if not isinstance(d, dict) or d.get("v") != INFO_FORMAT:
        raise ValueError("unknown ledger metadata format")
    return LedgerInfo(
        int(d["id"]),
        tuple(str(b) for b in d["ensemble"]),
        int(d["qw"]),
        int(d["qa"]),
        LedgerState(d["state"]),
        int(d["last"]),
        int(d["length"]),
    )
