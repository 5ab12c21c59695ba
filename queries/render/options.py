"""Where rows go and in which format: ``--format``, ``-o FILE``, and what a terminal changes.

The format is ``--format``, else FILE's suffix, else a table on a terminal
and CSV anywhere else. CSV lines end with CRLF in files (RFC 4180) and with
LF on a pipe or a terminal, as other command-line tools write them. A table
on a terminal fits its width and ends with a ``(N rows)`` footer; a table
anywhere else holds every column and only the rows.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

FORMATS = ("table", "csv", "json", "jsonl", "markdown")
SUFFIX_FORMATS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "table",
}
# A file named without a suffix gets what a pipe gets.
UNSUFFIXED_FORMAT = "csv"


class OutputError(Exception):
    """``-o FILE`` cannot be written: a missing or unwritable directory, a full disk."""


class FormatConflict(Exception):
    """``--format`` and the suffix of ``-o FILE`` disagree, or the suffix means nothing."""


def to_stdout(output: str | None) -> bool:
    return output in (None, "-")


def on_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def output_format(fmt: str | None, output: str | None, stream: IO[str] | None = None) -> str:
    """The format to write: ``--format``, else FILE's suffix, else by where rows go."""
    if to_stdout(output):
        if fmt is not None:
            return fmt
        return "table" if on_terminal(stream if stream is not None else sys.stdout) else "csv"
    path = Path(str(output))
    suffix = path.suffix.lower()
    implied = SUFFIX_FORMATS.get(suffix)
    if implied is None:
        if fmt is not None:
            return fmt
        if suffix:
            raise FormatConflict(
                f"cannot tell the format from the suffix of {path} "
                f"(known: {' '.join(SUFFIX_FORMATS)}): give --format"
            )
        return UNSUFFIXED_FORMAT
    if fmt is not None and fmt != implied:
        raise FormatConflict(
            f"--format {fmt} contradicts the suffix of {path} ({suffix} is {implied})"
        )
    return implied


def check_destination(output: str | None) -> None:
    """Raise OutputError unless FILE's directory exists and may be written to."""
    if to_stdout(output):
        return
    path = Path(str(output))
    parent = path.parent
    if not parent.exists():
        problem = "does not exist"
    elif not parent.is_dir():
        problem = "is not a directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        problem = "is not writable"
    else:
        return
    raise OutputError(f"cannot write {path}: {parent} {problem}")


def crlf_for(output: str | None) -> bool:
    """CSV lines end with CRLF in files (RFC 4180), with LF on a pipe or terminal."""
    return not to_stdout(output)


@dataclass(frozen=True)
class Layout:
    """What depends on where rows go rather than on the format."""

    crlf: bool = False  # CSV line ends
    width: int | None = None  # a table fits this many characters (a terminal's width)
    footer: bool = False  # a table ends with "(N rows)"


def layout_for(output: str | None, stream: IO[str] | None = None) -> Layout:
    """CRLF in files; on a terminal, a table as wide as it is, with a footer."""
    if not to_stdout(output):
        return Layout(crlf=True)
    if on_terminal(stream if stream is not None else sys.stdout):
        return Layout(width=shutil.get_terminal_size().columns, footer=True)
    return Layout()
