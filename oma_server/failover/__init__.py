"""Failover of replicated VMs into CloudStack: preflight, network mappings, test/live failover, cleanup, rollback."""
