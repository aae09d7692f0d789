"""Wire formats: the appliance protocol (`vma.v1`) turned into domain values and back, in one place."""
