"""The reference VMA agent: stands in for a VMware appliance in tests and the demo."""
