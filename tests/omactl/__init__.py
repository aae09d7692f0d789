"""omactl against a real OMA."""
