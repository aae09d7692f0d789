"""Ending a VM's migration: deleting a VM context that will not be migrated; closing a migrated one."""
