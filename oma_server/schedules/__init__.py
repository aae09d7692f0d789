"""Replication schedules: their timing, their store, the scheduler loop and the RPO of each VM."""
