"""The transaction coordinator (KIP-98): transactional ids' state on ``__transaction_state``, two-phase commit."""
