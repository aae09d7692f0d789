"""Runnable examples of the Python SDK (`python -m vma_client_stubs.examples.NAME --help`)."""
