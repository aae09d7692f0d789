"""The copied extents of a DiskCompleted are checked whole by the stream codec before anything applies."""

from __future__ import annotations

import pytest

from oma_server.errors import MessageRejected
from oma_server.protocol.stream import MAX_COPIED_EXTENTS
from oma_server.wire.stream_codec import decode_event
from vma.v1 import stream_pb2


def event(extents: list[tuple[int, int]] | None) -> stream_pb2.JobEvent:
    done = stream_pb2.DiskCompleted(disk_id="d1", change_id="c1")
    if extents is not None:
        done.copied.SetInParent()
        done.copied.extents.extend(stream_pb2.ByteExtent(offset=o, length=n) for o, n in extents)
    return stream_pb2.JobEvent(job_id="j1", sequence=4, disk_completed=done)


def test_absent_empty_and_valid_extents() -> None:
    assert decode_event(event(None)).copied_extents is None  # an appliance that does not report them
    assert decode_event(event([])).copied_extents == ()  # nothing changed
    assert decode_event(event([(0, 10), (10, 5), (100, 1)])).copied_extents == ((0, 10), (10, 5), (100, 1))


@pytest.mark.parametrize(
    ("extents", "names"),
    [
        ([(0, 0)], "extents[0].length is 0"),
        ([(0, 10), (5, 10)], "extents[1] starts at 5, before the end of the previous extent (10)"),
        ([(2**63 - 10, 20)], "extents[0] ends at"),
        ([(i * 2, 1) for i in range(MAX_COPIED_EXTENTS + 1)], f"at most {MAX_COPIED_EXTENTS}"),
    ],
)
def test_bad_extents_are_refused_naming_the_field(extents: list[tuple[int, int]], names: str) -> None:
    with pytest.raises(MessageRejected) as refused:
        decode_event(event(extents))
    assert refused.value.code == "INVALID_MESSAGE"
    assert names in refused.value.message and "job j1, sequence 4" in refused.value.message
