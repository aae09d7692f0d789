"""Output for omactl: rich tables for people, protobuf JSON for scripts, and the small humanizers both use."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
NONE = "-"
# Columns of free text: the only ones a table shortens to fit a terminal (ids, names, states and times never are).
SHRINKABLE = frozenset({"MESSAGE", "OPERATION", "ERROR", "REASON", "NOTE", "OUTCOME", "GUEST OS", "LABEL", "DEVICE"})
SHRUNK_MIN = 12
_GAP = 2  # between columns (rich's padding with box=None and pad_edge=False)


def size(n: int | float | None) -> str:
    """Bytes as B/KiB/MiB/GiB (binary units)."""
    if n is None:
        return NONE
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"  # pragma: no cover - loop always returns


def rate(bytes_per_second: int | float) -> str:
    return f"{size(bytes_per_second)}/s" if bytes_per_second else NONE


def seconds_text(seconds: float | None) -> str:
    """A duration as 45s, 3m05s or 2h07m."""
    if seconds is None or seconds < 0:
        return NONE
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def duration(value: duration_pb2.Duration | None) -> str:
    if value is None:
        return NONE
    return seconds_text(value.seconds + value.nanos / 1e9)


def local_time(value: timestamp_pb2.Timestamp | None) -> str:
    """A timestamp in local time, ISO 8601 to the second; '-' when unset."""
    if value is None or (value.seconds == 0 and value.nanos == 0):
        return NONE
    return value.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds")


def field_time(message: Message, name: str) -> str:
    return local_time(getattr(message, name)) if message.HasField(name) else NONE


def field_duration(message: Message, name: str) -> str:
    return duration(getattr(message, name)) if message.HasField(name) else NONE


def elapsed(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp | None = None) -> str:
    if start.seconds == 0 and start.nanos == 0:
        return NONE
    began = start.ToDatetime(tzinfo=UTC)
    finished = end.ToDatetime(tzinfo=UTC) if end is not None and (end.seconds or end.nanos) else datetime.now(UTC)
    return seconds_text(max(timedelta(0), finished - began).total_seconds())


def enum_label(enum_type: Any, value: int, prefix: str) -> str:
    """REPLICATION_JOB_STATUS_COMPLETED → 'completed'; unknown numbers stay numbers; UNSPECIFIED → '-'."""
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    short = name.removeprefix(prefix + "_").lower()
    return NONE if short == "unspecified" else short


def enum_choices(enum_type: Any, prefix: str) -> list[str]:
    """The lowercase names an operator may type for an enum (UNSPECIFIED excluded)."""
    out = []
    for value in enum_type.DESCRIPTOR.values:
        name = value.name
        short = name.removeprefix(prefix + "_").lower()
        if short != "unspecified":
            out.append(short)
    return out


def enum_parse(enum_type: Any, prefix: str, text: str) -> int:
    value: int = enum_type.Value(f"{prefix}_{text.upper().replace('-', '_')}")
    return value


def to_dict(message: Message) -> dict[str, Any]:
    """Protobuf JSON with the proto field names and every field present (scripts need not guess defaults)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def short_id(value: str) -> str:
    return value or NONE


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


class Output:
    """Where omactl writes: a rich console (tables, bars) or JSON documents on stdout.

    Tables never wrap a cell: on a terminal only free-text columns (SHRINKABLE) are shortened, with an ellipsis, to
    fit its width — an id is always whole, even when the line then runs past the edge. Off a terminal, or with
    `wide`, nothing is shortened. With `quiet`, commands print only the ids of what they list or create.
    """

    def __init__(self, as_json: bool, stream: TextIO | None = None, *, wide: bool = False, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet and not as_json
        self.stream = stream or sys.stdout
        self.is_tty = self.stream.isatty()
        self.wide = wide or not self.is_tty
        width = None if self.is_tty or os.environ.get("COLUMNS") else 200
        self.console = Console(file=self.stream, width=width, highlight=False, soft_wrap=not self.is_tty)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.live_console: Console | None = None  # set while live bars own the terminal

    # ---- JSON -------------------------------------------------------------------------------------------------
    def json(self, value: Any) -> None:
        self.stream.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
        self.stream.flush()

    def json_line(self, value: Any) -> None:
        self.stream.write(json.dumps(value, separators=(",", ":")) + "\n")
        self.stream.flush()

    def message(self, message: Message) -> None:
        self.json(to_dict(message))

    def messages(self, messages: Iterable[Message]) -> None:
        self.json([to_dict(m) for m in messages])

    # ---- people -----------------------------------------------------------------------------------------------
    def line(self, text: str | Text = "") -> None:
        self.console.print(text, markup=False, highlight=False)

    def note(self, text: str) -> None:
        """A remark for people on stderr (progress of a reconnect, hints); never part of machine output."""
        (self.live_console or self.err).print(text, markup=False, highlight=False)

    def ids(self, ids: Iterable[str]) -> None:
        """`--quiet`: one id per line, nothing else (for `$(omactl -q ...)`)."""
        for value in ids:
            self.stream.write(f"{value}\n")
        self.stream.flush()

    def listing(
        self, items: Sequence[Any], headers: Sequence[str], row: Callable[[Any], Sequence[object]], title: str
    ) -> int:
        """What a `list` command prints: the messages as JSON (`--json`), their ids (`--quiet`) or a table of
        `row(item)`; the command's exit status."""
        if self.as_json:
            self.messages(items)
        elif self.quiet:
            self.ids(item.id for item in items)
        else:
            self.table(headers, (row(item) for item in items), title=title)
        return 0

    def record(self, message: Any, fields: Sequence[tuple[str, object]], headline: str = "") -> int:
        """What a `show` (or a change) prints of one resource: the message as JSON (`--json`), its id (`--quiet`),
        or `headline` then its fields; the command's exit status."""
        if self.as_json:
            self.message(message)
        elif self.quiet:
            self.ids([message.id])
        else:
            if headline:
                self.line(headline)
            self.fields(fields)
        return 0

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> None:
        cells = [[cell if isinstance(cell, Text) else Text(str(cell)) for cell in row] for row in rows]
        if not cells:
            self.line(f"(no {title.lower() if title else 'rows'})")
            return
        widths = self._widths(headers, cells)
        table = Table(title=title, show_edge=False, box=None, pad_edge=False, header_style="bold")
        for header, width in zip(headers, widths, strict=True):
            table.add_column(header, no_wrap=True, min_width=width, max_width=width)
        for row in cells:
            table.add_row(*(self._fit(cell, width) for cell, width in zip(row, widths, strict=True)))
        self._print(table, sum(widths) + _GAP * (len(widths) - 1))

    def _widths(self, headers: Sequence[str], cells: list[list[Text]]) -> list[int]:
        """Each column's width: its widest cell, except that free-text columns give way until the table fits."""
        columns = zip(*cells, strict=True)
        natural = [max(len(h), *(c.cell_len for c in column)) for h, column in zip(headers, columns, strict=True)]
        shrinkable = [i for i, h in enumerate(headers) if h in SHRINKABLE]
        excess = sum(natural) + _GAP * (len(natural) - 1) - self.console.width
        if self.wide or excess <= 0 or not shrinkable:
            return natural
        widths = list(natural)
        for i in sorted(shrinkable, key=lambda i: -natural[i]):  # the widest gives first
            give = min(excess, widths[i] - min(natural[i], SHRUNK_MIN))
            widths[i] -= give
            excess -= give
        return widths

    @staticmethod
    def _fit(cell: Text, width: int) -> Text:
        if cell.cell_len <= width:
            return cell
        return Text(_cut(cell.plain, width), style=cell.style)

    def _print(self, renderable: Table, width: int | None = None) -> None:
        """Print a table at least `width` wide (a line may run past a terminal's edge rather than fold an id); off a
        terminal without the padding rich adds at line ends (friendlier to grep/diff)."""
        wanted = max(self.console.width, width or 0)
        if self.is_tty:
            self.console.print(renderable, width=wanted, crop=False)
            return
        with self.console.capture() as captured:
            self.console.print(renderable, width=wanted, crop=False)
        text = "\n".join(line.rstrip() for line in captured.get().splitlines())
        self.stream.write(text + "\n")
        self.stream.flush()

    def fields(self, pairs: Sequence[tuple[str, object]], title: str | None = None) -> None:
        """Key/value lines of one resource."""
        table = Table(title=title, show_header=False, show_edge=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in pairs:
            table.add_row(key, value if isinstance(value, Text) else Text(str(value)))
        self._print(table)


def status_text(label: str) -> Text:
    """A status word coloured by outcome."""
    style = {
        "completed": "green",
        "active": "green",
        "connected": "green",
        "ready_for_failover": "green",
        "pass": "green",
        "failed": "red",
        "error": "red",
        "revoked": "red",
        "FAIL": "red",
        "cancelled": "yellow",
        "cancelling": "yellow",
        "stalled": "yellow",
        "disconnected": "yellow",
        "cleanup_required": "yellow",
    }.get(label, "")
    return Text(label, style=style)
