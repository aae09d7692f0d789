"""Benchmarks (not tests): `python -m bench.progress`, `python -m bench.nbd`."""
