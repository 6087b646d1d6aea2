"""Every metadata key is built and parsed here, and nowhere else.

Layout (one prefix per cluster)::

    /tidelog/{cluster}/brokers/{broker_id}                  broker registration (leased)
    /tidelog/{cluster}/bookies/{bookie_id}                  bookie registration (leased)
    /tidelog/{cluster}/topics/{name}                        topic: id, partitions, configs
    /tidelog/{cluster}/partitions/{topic_id}/{partition}    managed-log state (ledgers, epoch, start offset)
    /tidelog/{cluster}/owners/{topic_id}/{partition}        partition ownership (leased)
    /tidelog/{cluster}/segments/{topic_id}/{partition}/{base_offset:020d}   one key per segment
    /tidelog/{cluster}/offload/{topic_id}/{partition}/{ledger_id:020d}      offload intent (object name)
    /tidelog/{cluster}/ledgers/{ledger_id:020d}             ledger metadata
    /tidelog/{cluster}/counters/{name}                      id allocators (ledger ids, producer ids)
    /tidelog/{cluster}/controller                           controller election (leased)
    /tidelog/{cluster}/assignments/{topic_id}               desired owner of each partition (written by the controller)
    /tidelog/{cluster}/reassignments/{topic_id}/{partition} a requested move (pin: target node id)
    /tidelog/{cluster}/config/broker                        cluster-wide dynamic broker configs (resource "")
    /tidelog/{cluster}/config/broker/{broker_id}            one broker's dynamic broker configs
    /tidelog/{cluster}/cluster_id                           the cluster id reported to clients
    /tidelog/{cluster}/acls/{type}/{pattern}/{name}/{principal}/{host}/{operation}/{permission}   one ACL
    /tidelog/{cluster}/scram/{user}/{mechanism}             a SCRAM credential (salt, iterations, keys)
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one cluster."""

    cluster: str = "tidelog"

    @property
    def root(self) -> str:
        return f"/tidelog/{self.cluster}/"

    # --- membership -------------------------------------------------------------------------
    def brokers_prefix(self) -> str:
        return f"{self.root}brokers/"

    def broker(self, broker_id: int) -> str:
        return f"{self.brokers_prefix()}{broker_id}"

    def bookies_prefix(self) -> str:
        return f"{self.root}bookies/"

    def bookie(self, bookie_id: str) -> str:
        return f"{self.bookies_prefix()}{bookie_id}"

    def controller(self) -> str:
        return f"{self.root}controller"

    def draining_prefix(self) -> str:
        """Brokers shutting down (a key bound to the broker's lease): the controller assigns them nothing."""
        return f"{self.root}draining/"

    def draining(self, broker_id: int) -> str:
        return f"{self.draining_prefix()}{broker_id}"

    # --- topics and partitions ----------------------------------------------------------------
    def topics_prefix(self) -> str:
        return f"{self.root}topics/"

    def topic(self, name: str) -> str:
        return f"{self.topics_prefix()}{name}"

    def topic_name(self, key: str) -> str:
        return key[len(self.topics_prefix()) :]

    def partitions_prefix(self, topic_id: str) -> str:
        return f"{self.root}partitions/{topic_id}/"

    def partition(self, topic_id: str, partition: int) -> str:
        return f"{self.partitions_prefix(topic_id)}{partition}"

    def owner(self, topic_id: str, partition: int) -> str:
        return f"{self.root}owners/{topic_id}/{partition}"

    def owners_prefix(self) -> str:
        return f"{self.root}owners/"

    def owner_id(self, key: str) -> tuple[str, int]:
        """(topic id, partition) of an ownership key."""
        topic_id, _, partition = key[len(self.owners_prefix()) :].rpartition("/")
        if not topic_id or not partition.isdigit():
            raise ValueError(f"not an ownership key: {key!r}")
        return topic_id, int(partition)

    def assignments_prefix(self) -> str:
        return f"{self.root}assignments/"

    def assignment(self, topic_id: str) -> str:
        """The controller's desired owners of every partition of one topic (one key per topic)."""
        return f"{self.assignments_prefix()}{topic_id}"

    def reassignments_prefix(self) -> str:
        return f"{self.root}reassignments/"

    def reassignment(self, topic_id: str, partition: int) -> str:
        """A requested move of one partition (AlterPartitionReassignments; the controller honours and clears it)."""
        return f"{self.reassignments_prefix()}{topic_id}/{partition}"

    def reassignment_id(self, key: str) -> tuple[str, int]:
        """(topic id, partition) of a reassignment key."""
        topic_id, _, partition = key[len(self.reassignments_prefix()) :].rpartition("/")
        if not topic_id or not partition.isdigit():
            raise ValueError(f"not a reassignment key: {key!r}")
        return topic_id, int(partition)

    def segments_prefix(self, topic_id: str, partition: int) -> str:
        return f"{self.root}segments/{topic_id}/{partition}/"

    def segment(self, topic_id: str, partition: int, base_offset: int) -> str:
        return f"{self.segments_prefix(topic_id, partition)}{base_offset:020d}"

    def offload_intents_prefix(self, topic_id: str, partition: int) -> str:
        return f"{self.root}offload/{topic_id}/{partition}/"

    def offload_intent(self, topic_id: str, partition: int, ledger_id: int) -> str:
        return f"{self.offload_intents_prefix(topic_id, partition)}{ledger_id:020d}"

    # --- ledgers and counters -----------------------------------------------------------------
    def ledgers_prefix(self) -> str:
        return f"{self.root}ledgers/"

    def ledger(self, ledger_id: int) -> str:
        return f"{self.ledgers_prefix()}{ledger_id:020d}"

    def ledger_id(self, key: str) -> int:
        return int(key[len(self.ledgers_prefix()) :])

    def counter(self, name: str) -> str:
        return f"{self.root}counters/{name}"

    def cluster_id(self) -> str:
        return f"{self.root}cluster_id"

    def configs_prefix(self) -> str:
        """Dynamic broker configs (AlterConfigs on a broker resource); every broker watches this prefix."""
        return f"{self.root}config/"

    def broker_config(self, broker_id: int | None = None) -> str:
        """One broker's dynamic configs, or (None) the cluster-wide defaults every broker takes."""
        base = f"{self.configs_prefix()}broker"
        return base if broker_id is None else f"{base}/{broker_id}"

    def broker_config_id(self, key: str) -> int | None:
        """The broker id of a ``broker_config`` key (None: the cluster-wide defaults); ValueError otherwise."""
        rest = key[len(self.configs_prefix()) :] if key.startswith(self.configs_prefix()) else key
        if rest == "broker":
            return None
        head, _, node = rest.partition("/")
        if head != "broker" or not node.isdigit():
            raise ValueError(f"not a broker config key: {key!r}")
        return int(node)

    # --- ACLs (brokers/security/acl_store.py) ---------------------------------------------------
    def acls_prefix(self) -> str:
        """Every ACL, one key each; every broker watches this prefix."""
        return f"{self.root}acls/"

    def acl(
        self, resource_type: int, pattern_type: int, name: str, principal: str, host: str, operation: int,
        permission: int,
    ) -> str:
        """One ACL binding (Kafka's integer codes; the texts percent-encoded, so a "/" in a name stays one part)."""
        texts = "/".join(quote(t, safe="") for t in (name, principal, host))
        return f"{self.acls_prefix()}{resource_type}/{pattern_type}/{texts}/{operation}/{permission}"

    # --- security -----------------------------------------------------------------------------
    def scram_prefix(self) -> str:
        """SCRAM credentials (AlterUserScramCredentials); read by every broker when a client authenticates."""
        return f"{self.root}scram/"

    def scram_credential(self, user: str, mechanism: str) -> str:
        """One user's credential for one mechanism; the user name is %-quoted (it may hold '/')."""
        return f"{self.scram_prefix()}{quote(user, safe='')}/{mechanism}"

    def scram_credential_id(self, key: str) -> tuple[str, str]:
        """(user, mechanism) of a ``scram_credential`` key; ValueError otherwise."""
        if not key.startswith(self.scram_prefix()):
            raise ValueError(f"not a SCRAM credential key: {key!r}")
        user, sep, mechanism = key[len(self.scram_prefix()) :].partition("/")
        if not sep or not user or not mechanism:
            raise ValueError(f"not a SCRAM credential key: {key!r}")
        return unquote(user), mechanism
