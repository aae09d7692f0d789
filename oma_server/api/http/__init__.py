"""The OMA's HTTP API (`--http-listen`, off by default): the live dashboard and Prometheus `/metrics`."""
