"""Output rows of `blipq caption` as JSON Lines, CSV or tab-separated text."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from typing import Literal, Protocol, TextIO

from blipq.contract.errors import BlipqError

OutputFormat = Literal["jsonl", "csv", "txt"]


@dataclass(frozen=True)
class CaptionRow:
    """The outcome for one input: its source (path, URL or index), and a caption or an error."""

    source: str
    caption: str | None = None
    error: BlipqError | None = None


class RowWriter(Protocol):
    def write(self, row: CaptionRow) -> None: ...


class JsonLinesWriter:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, row: CaptionRow) -> None:
        error = row.error.to_dict() if row.error else None
        record = {"path": row.source, "caption": row.caption, "error": error}
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()


class CsvWriter:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._csv = csv.writer(stream)
        self._csv.writerow(["path", "caption", "error"])

    def write(self, row: CaptionRow) -> None:
        error = f"{row.error.code}: {row.error.message}" if row.error else ""
        self._csv.writerow([row.source, row.caption or "", error])
        self._stream.flush()


class TextWriter:
    """`path<TAB>caption`, or `path<TAB>ERROR code: message`; newlines in messages are flattened."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, row: CaptionRow) -> None:
        value = f"ERROR {row.error.code}: {row.error.message}" if row.error else row.caption or ""
        self._stream.write(f"{row.source}\t{' '.join(value.split())}\n")
        self._stream.flush()


def open_writer(fmt: OutputFormat, stream: TextIO) -> RowWriter:
    writers: dict[str, type[JsonLinesWriter | CsvWriter | TextWriter]] = {
        "jsonl": JsonLinesWriter,
        "csv": CsvWriter,
        "txt": TextWriter,
    }
    return writers[fmt](stream)
