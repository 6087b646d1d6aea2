"""SCRAM credentials in the metadata store, one key per user and mechanism (metadata/keys.py).

Read from the store at every authentication, so a credential written through any broker is used by all of
them at once (no cache to go stale); authentications are rare next to requests.
"""

from __future__ import annotations

from brokers.security.scram import ScramCredential
from metadata.api import MetadataStore
from metadata.keys import Keys


class CredentialStore:
    def __init__(self, store: MetadataStore, keys: Keys) -> None:
        self._store = store
        self._keys = keys

    async def get(self, user: str, mechanism: str) -> ScramCredential | None:
        found = await self._store.get(self._keys.scram_credential(user, mechanism))
        return None if found is None else ScramCredential.decode(found.value)

    async def put(self, user: str, mechanism: str, credential: ScramCredential) -> None:
        await self._store.put(self._keys.scram_credential(user, mechanism), credential.encode())

    async def delete(self, user: str, mechanism: str) -> bool:
        return await self._store.delete(self._keys.scram_credential(user, mechanism))

    async def all(self) -> dict[str, dict[str, ScramCredential]]:
        """user -> mechanism -> credential."""
        out: dict[str, dict[str, ScramCredential]] = {}
        for item in await self._store.list(self._keys.scram_prefix()):
            try:
                user, mechanism = self._keys.scram_credential_id(item.key)
            except ValueError:
                continue
            out.setdefault(user, {})[mechanism] = ScramCredential.decode(item.value)
        return out
