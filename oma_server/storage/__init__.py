"""Replica storage on the OMA side: CloudStack volumes attached to the OMA VM, and their NBD exports."""
