"""Several OMA processes on one PostgreSQL (DESIGN.md §8): the database's own primitives, no other service.

- `bus`: LISTEN/NOTIFY between the processes — wake-ups only (NOTIFY is best-effort); every one has a polling
  fallback, so a lost notification delays, never loses.
- `ownership`: which process holds each appliance's stream — a session advisory lock per appliance, on one
  connection of the process's own, so a dead process's appliances are free as soon as PostgreSQL sees its
  connection go.
- `routing`: what one process asks of another through them — let go of a stream, deliver a command, an answer
  stored.

On SQLite (one process per database file, db/sqlite_owner.py) all of it is off and this process holds everything.
"""
