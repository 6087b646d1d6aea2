"""The cluster: membership, controller election, partition assignment and ownership (issue 10, in progress).

Imports ``metadata`` and ``brokers.config`` only; ``log/``, ``groups/`` and ``handlers/`` never import it (a
composition root wires them). See docs/architecture.md, "Cluster (in progress)".
"""
