"""Persistence: Peewee models, the database runner (no DB call on the event loop) and versioned migrations."""
