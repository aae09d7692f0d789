"""Block hashes, disk digests and the verification of replicas (issue #15)."""
