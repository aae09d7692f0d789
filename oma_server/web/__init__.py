"""The OMA's HTTP listener (`--http-listen`, off by default): the live dashboard and Prometheus `/metrics`."""
