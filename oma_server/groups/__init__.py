"""Machine groups: VMs failed over, cleaned up and scheduled together (store.py, runs.py)."""
