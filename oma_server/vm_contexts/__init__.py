"""VMware VMs under migration: registration from discovery, the VM context state machine, queries."""
