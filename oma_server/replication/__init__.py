"""Replication jobs: the state machine, the live job store (progress, events, watch fan-out) and workflows."""
