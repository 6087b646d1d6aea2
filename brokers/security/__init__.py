"""Who a connection is (principals), how it proved it (TLS, SASL) and what it may do (ACLs, quotas)."""
