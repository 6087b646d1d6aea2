"""A Kafka principal: who a request comes from, as ACLs and quotas name it (``User:alice``)."""

from __future__ import annotations

from dataclasses import dataclass

USER = "User"


@dataclass(frozen=True, slots=True)
class KafkaPrincipal:
    """``principal_type:name``, as Kafka spells it; connections that did not authenticate are ``User:ANONYMOUS``."""

    principal_type: str
    name: str

    def __str__(self) -> str:
        return f"{self.principal_type}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> KafkaPrincipal:
        """``User:alice`` -> KafkaPrincipal("User", "alice"); a missing type or name is a ValueError."""
        kind, sep, name = text.partition(":")
        if not sep or not kind or not name:
            raise ValueError(f"not a principal (want Type:name): {text!r}")
        return cls(kind, name)


ANONYMOUS = KafkaPrincipal(USER, "ANONYMOUS")
