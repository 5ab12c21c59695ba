"""One writer for every command that prints rows: table, CSV, JSON, JSON Lines, Markdown.

Values are written the same way everywhere: timestamps as ISO 8601 UTC with
``Z``, dates as ``YYYY-MM-DD``, NULL as an empty CSV cell or JSON ``null``.

Where rows go decides two things. CSV lines end with CRLF in files (RFC 4180)
and with LF on a pipe or a terminal, as other command-line tools write them.
A table on a terminal fits its width and ends with a ``(N rows)`` footer; a
table anywhere else holds every column and only the rows.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import click

from ingest.timestamps import format_timestamp

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

F = TypeVar("F", bound=Callable[..., Any])


class OutputError(Exception):
    """``-o FILE`` cannot be written: a missing or unwritable directory, a full disk."""


class FormatConflict(Exception):
    """``--format`` and the suffix of ``-o FILE`` disagree, or the suffix means nothing."""


def output_options(func: F) -> F:
    """``--format`` and ``-o/--output``, shared by every command that prints rows.

    The command receives the format already chosen (never None), and FILE has
    been checked: a format the suffix contradicts is a usage error (exit 2), a
    FILE that cannot be written one ``Error:`` line (exit 1), before any work.
    """

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        output = kwargs["output"]
        try:
            kwargs["fmt"] = output_format(kwargs["fmt"], output)
        except FormatConflict as exc:
            raise click.UsageError(str(exc)) from None
        try:
            check_destination(output)
            return func(*args, **kwargs)
        except OutputError as exc:
            raise click.ClickException(str(exc)) from None

    wrapped = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, writable=True, allow_dash=True),
        default=None,
        metavar="FILE",
        help="Write rows to FILE instead of standard output (format from its suffix: "
        ".csv .json .jsonl .md .txt).",
    )(checked)
    wrapped = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format [default: from FILE's suffix; on standard output a table on "
        "a terminal, CSV otherwise].",
    )(wrapped)
    return cast(F, wrapped)


def _to_stdout(output: str | None) -> bool:
    return output in (None, "-")


def _on_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def output_format(fmt: str | None, output: str | None, stream: IO[str] | None = None) -> str:
    """The format to write: ``--format``, else FILE's suffix, else by where rows go."""
    if _to_stdout(output):
        if fmt is not None:
            return fmt
        return "table" if _on_terminal(stream if stream is not None else sys.stdout) else "csv"
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
    if _to_stdout(output):
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
    return not _to_stdout(output)


# --------------------------------------------------------------------------- values


def text_value(value: Any) -> str:
    """A cell as text; NULL is the empty string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, timedelta):
        return repr(value.total_seconds())
    if isinstance(value, list | dict | tuple):
        return json.dumps(json_value(value), ensure_ascii=False, separators=(",", ":"))
    return str(value)


def json_value(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def _display(value: Any) -> str:
    """A cell for people that is not a number: as in CSV, on one line."""
    return text_value(value).replace("\n", "\\n")


# Decimals shown at most in a column of fractions; a column whose values are
# all smaller than this shows them in scientific notation instead of as zeros.
MAX_DECIMALS = 4
TINY = 10.0**-MAX_DECIMALS
ELLIPSIS = "…"
GAP = "  "


@dataclass(frozen=True)
class Column:
    """How one table column shows its values: one format for all of them."""

    name: str
    numeric: bool
    show: Callable[[Any], str]


def column_format(name: str, values: Sequence[Any]) -> Column:
    """Integers as they are, fractions with the same decimals, anything else as text."""
    present = [v for v in values if v is not None]
    if not present or not all(_is_number(v) for v in present):
        return Column(name, False, _display)
    if all(isinstance(v, int) for v in present):
        return Column(name, True, lambda v: "" if v is None else str(v))
    finite = [v for v in present if _finite(v)]
    nonzero = [abs(v) for v in finite if v != 0]
    if nonzero and max(nonzero) < TINY:
        return Column(name, True, lambda v: "" if v is None else f"{v:.3e}")
    places = min(max((_decimals(v) for v in finite), default=0), MAX_DECIMALS)
    if all(isinstance(v, Decimal) for v in present):
        # A DECIMAL column has one scale; keep it.
        places = max((_decimals(v) for v in finite), default=0)
    return Column(name, True, lambda v: "" if v is None else f"{v:.{places}f}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _finite(value: int | float | Decimal) -> bool:
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _decimals(value: int | float | Decimal) -> int:
    """Decimals needed to show ``value`` exactly as Python or DuckDB gives it."""
    if isinstance(value, int):
        return 0
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
    else:
        exponent = Decimal(repr(value)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


# --------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class Layout:
    """What depends on where rows go rather than on the format."""

    crlf: bool = False  # CSV line ends
    width: int | None = None  # a table fits this many characters (a terminal's width)
    footer: bool = False  # a table ends with "(N rows)"


def write_rows(
    out: IO[str],
    fmt: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    layout: Layout = Layout(),
) -> int:
    """Write ``rows`` in ``fmt``; returns how many were written."""
    writer = _WRITERS[fmt]
    return writer(out, list(columns), iter(rows), layout)


def _csv(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], layout: Layout) -> int:
    writer = csv.writer(out, lineterminator="\r\n" if layout.crlf else "\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([text_value(v) for v in row])
        count += 1
    return count


def _jsonl(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], _layout: Layout) -> int:
    count = 0
    for row in rows:
        record = {c: json_value(v) for c, v in zip(columns, row, strict=True)}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _json(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], _layout: Layout) -> int:
    count = 0
    out.write("[")
    for row in rows:
        record = {c: json_value(v) for c, v in zip(columns, row, strict=True)}
        out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(record, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _formatted(
    columns: list[str], rows: Iterator[Sequence[Any]]
) -> tuple[list[Column], list[list[str]]]:
    raw = list(rows)
    formats = [column_format(name, [row[i] for row in raw]) for i, name in enumerate(columns)]
    cells = [[f.show(v) for f, v in zip(formats, row, strict=True)] for row in raw]
    return formats, cells


def _table(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], layout: Layout) -> int:
    formats, cells = _formatted(columns, rows)
    widths = [len(c) for c in columns]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    shown = _fit(widths, formats, layout.width)

    def line(values: Sequence[str]) -> str:
        parts = []
        for index, width in shown:
            if index is None:
                parts.append(ELLIPSIS)
                continue
            text = _clip(values[index], width)
            parts.append(text.rjust(width) if formats[index].numeric else text.ljust(width))
        return GAP.join(parts).rstrip()

    out.write(line(columns) + "\n")
    out.write(GAP.join("-" * w for _, w in shown) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    if layout.footer:
        count = f"{len(cells)} row{'s' if len(cells) != 1 else ''}"
        visible = sum(1 for index, _ in shown if index is not None)
        if visible < len(columns):
            count += f"; {visible} of {len(columns)} columns shown"
        out.write(f"({count})\n")
    return len(cells)


def _fit(
    widths: list[int], formats: list[Column], width: int | None
) -> list[tuple[int | None, int]]:
    """The columns to show with their widths: (None, 1) stands for the elided ones.

    As DuckDB's CLI does, a table wider than the terminal keeps its first and
    last columns and as many others as fit, from both ends, and shows ``…``
    for the middle ones; text still too wide is cut, numbers never are.
    """
    everything: list[tuple[int | None, int]] = list(enumerate(widths))
    if width is None or _total(everything) <= width:
        return everything
    if len(widths) == 1:
        return _cut(everything, formats, width)
    left: list[tuple[int | None, int]] = [(0, widths[0])]
    right: list[tuple[int | None, int]] = [(len(widths) - 1, widths[-1])]
    low, high = 1, len(widths) - 2
    while low <= high:
        take_left = len(left) <= len(right)
        index = low if take_left else high
        candidate = (index, widths[index])
        if _total([*left, candidate, (None, 1), *right]) > width:
            break
        if take_left:
            left.append(candidate)
            low += 1
        else:
            right.insert(0, candidate)
            high -= 1
    return _cut([*left, (None, 1), *right] if low <= high else [*left, *right], formats, width)


def _cut(
    chosen: list[tuple[int | None, int]], formats: list[Column], width: int
) -> list[tuple[int | None, int]]:
    """Still too wide: cut the widest text columns, down to a few characters."""
    while (excess := _total(chosen) - width) > 0:
        texts = [
            (w, pos)
            for pos, (i, w) in enumerate(chosen)
            if i is not None and not formats[i].numeric and w > 3
        ]
        if not texts:
            break
        w, pos = max(texts)
        chosen[pos] = (chosen[pos][0], max(3, w - excess))
    return chosen


def _total(shown: Sequence[tuple[int | None, int]]) -> int:
    return sum(w for _, w in shown) + len(GAP) * (len(shown) - 1)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + ELLIPSIS


def _markdown(
    out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], _layout: Layout
) -> int:
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", "<br>")

    formats, cells = _formatted(columns, rows)
    out.write("| " + " | ".join(cell(c) for c in columns) + " |\n")
    out.write("|" + "|".join("---:" if f.numeric else "---" for f in formats) + "|\n")
    for row in cells:
        out.write("| " + " | ".join(cell(v) for v in row) + " |\n")
    return len(cells)


_WRITERS: dict[str, Callable[[IO[str], list[str], Iterator[Sequence[Any]], Layout], int]] = {
    "csv": _csv,
    "json": _json,
    "jsonl": _jsonl,
    "table": _table,
    "markdown": _markdown,
}


@contextmanager
def open_output(output: str | None) -> Iterator[IO[str]]:
    """Standard output, or FILE written under a temporary name and renamed when done."""
    if _to_stdout(output):
        yield sys.stdout
        return
    path = Path(str(output))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                yield handle
        except OSError as exc:  # the directory went away, the disk is full
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        replace_output(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_output(staged: Path, final: Path) -> None:
    """Put a finished file in place of FILE; OutputError if the file system refuses."""
    try:
        os.replace(staged, final)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc


def layout_for(output: str | None, stream: IO[str] | None = None) -> Layout:
    """CRLF in files; on a terminal, a table as wide as it is, with a footer."""
    if not _to_stdout(output):
        return Layout(crlf=True)
    if _on_terminal(stream if stream is not None else sys.stdout):
        return Layout(width=shutil.get_terminal_size().columns, footer=True)
    return Layout()


def render(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str | None,
    output: str | None,
) -> int:
    """Write a result where the output options say; returns the row count."""
    chosen = output_format(fmt, output)
    with open_output(output) as out:
        return write_rows(out, chosen, columns, rows, layout_for(output))
