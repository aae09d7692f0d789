"""A real PostgreSQL server for tests: initdb + pg_ctl in a temp dir, on a free port, as an unprivileged user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oma_server.ports import free_port


def postgres_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresServer:
    """initdb/pg_ctl under a temp dir. As root, runs as the 'postgres' system user (initdb refuses root)."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries are missing; `make test` installs the postgresql package")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="oma-pg-"))
        self.datadir = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres")
            os.chown(self.root, uid.pw_uid, uid.pw_gid)
        self.password = "oma-test"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}")

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", self.user, "-A", "md5", f"--pwfile={pwfile}", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.datadir), "-o", opts, "-l", str(self.root / "log"), "-w", "start")
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)


@contextmanager
def row_locked(url: str, table: str, row_id: str) -> Iterator[None]:
    """Hold a lock on one row from outside the OMA until the block ends (then roll back: nothing changes). An OMA
    transaction that writes the row waits inside the database meanwhile — an in-flight unit of work, made real."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (row_id,))
        yield
    finally:
        conn.rollback()
        conn.close()


async def wait_until_blocked(url: str, timeout: float = 10.0) -> None:
    """Until a backend of the database waits for a lock (the OMA's unit of work has started and waits for ours).

    Polled on a connection of its own in autocommit: inside a transaction pg_stat_activity is a frozen snapshot."""
    import asyncio

    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                (waiting,) = cur.fetchone()
            if waiting:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no transaction of the OMA started to wait for the held lock")
    finally:
        conn.close()
