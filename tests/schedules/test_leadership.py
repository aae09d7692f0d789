"""One scheduler among OMA processes sharing a PostgreSQL: the advisory lock's holder leads; when it lets go (or its
process dies) another takes over. Real PostgreSQL; separate connections stand for separate processes."""

from __future__ import annotations

import pytest

from oma_server.schedules.leadership import Leadership
from tests.pg import PostgresServer


@pytest.mark.postgres
def test_one_process_leads_and_another_takes_over(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    first, second = Leadership(url, "postgresql"), Leadership(url, "postgresql")
    try:
        assert first.try_lead() and first.leading
        assert not second.try_lead() and not second.leading
        assert first.try_lead()  # still the leader: taking the lock it holds again says yes
        first.release()  # a stop (a dead process's connection goes the same way)
        assert second.try_lead()
        assert not first.try_lead()
    finally:
        first.release()
        second.release()


@pytest.mark.postgres
def test_leadership_is_per_database(postgres: PostgresServer) -> None:
    one, other = (
        Leadership(postgres.create_database(), "postgresql"),
        Leadership(postgres.create_database(), "postgresql"),
    )
    try:
        assert one.try_lead() and other.try_lead()  # two OMA installations on one server do not wait for each other
    finally:
        one.release()
        other.release()


def test_sqlite_always_leads() -> None:
    alone = Leadership("sqlite:///unused.db", "sqlite")
    assert alone.leading and alone.try_lead()
