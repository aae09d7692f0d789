"""The supervisor's restart verdict: handshake failures in a row, or the same export missing round after round —
never exports that come and go with attach and detach churn (a 50-VM bench saw nbdkit restarted three times under
every copy when any missing export counted)."""

from __future__ import annotations

from oma_server.nbd.verdict import ProbeStreak


def test_failed_handshakes_in_a_row_are_due() -> None:
    streak = ProbeStreak(3)
    streak.failed()
    streak.failed()
    assert not streak.due
    streak.failed()
    assert streak.due


def test_a_good_listing_ends_the_streak() -> None:
    streak = ProbeStreak(3)
    streak.failed()
    streak.failed()
    assert streak.answered(set()) == set()
    streak.failed()
    assert not streak.due and streak.failures == 1


def test_the_same_export_missing_in_every_round_is_due() -> None:
    streak = ProbeStreak(3)
    assert streak.answered({"a", "b"}) == {"a", "b"}
    assert streak.answered({"a"}) == {"a"}
    assert not streak.due
    assert streak.answered({"a", "c"}) == {"a"}
    assert streak.due


def test_a_different_export_missing_each_round_is_churn_not_a_broken_server() -> None:
    streak = ProbeStreak(3)
    for rounds, missing in enumerate(({"a"}, {"b"}, {"c"}, {"d"}, {"e"}), start=1):
        persistent = streak.answered(missing)
        assert not streak.due, (rounds, persistent)
    assert streak.failures <= 1


def test_failed_handshakes_and_a_persistently_missing_export_add_up() -> None:
    streak = ProbeStreak(3)
    streak.answered({"a"})
    streak.failed()
    assert streak.answered({"a"}) == {"a"}
    assert streak.due
    streak.reset()
    assert streak.failures == 0 and not streak.due
