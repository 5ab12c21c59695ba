"""One writer for every command that prints rows: table, CSV, JSON, JSON Lines, Markdown.

Values are written the same way everywhere: timestamps as ISO 8601 UTC with
``Z``, dates as ``YYYY-MM-DD``, NULL as an empty CSV cell or JSON ``null``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import click

FORMATS = ("table", "csv", "json", "jsonl", "markdown")
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "table",
}

F = TypeVar("F", bound=Callable[..., Any])


def output_options(func: F) -> F:
    """``--format`` and ``-o/--output``, shared by every command that prints rows."""
    func = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, writable=True, allow_dash=True),
        default=None,
        metavar="FILE",
        help="Write rows to FILE instead of standard output (format from its suffix: "
        ".csv .json .jsonl .md).",
    )(func)
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format [default: table on a terminal, CSV otherwise].",
    )(func)
    return func


def choose_format(fmt: str | None, output: str | None, stream: IO[str] | None = None) -> str:
    if fmt is not None:
        return fmt
    if output not in (None, "-"):
        return _SUFFIX_FORMATS.get(Path(str(output)).suffix.lower(), "csv")
    stream = stream if stream is not None else sys.stdout
    return "table" if stream.isatty() else "csv"


# --------------------------------------------------------------------------- values


def iso_time(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    spec = "milliseconds" if value.microsecond % 1000 == 0 else "microseconds"
    return value.isoformat(timespec=spec) + "Z"


def text_value(value: Any) -> str:
    """A cell as text; NULL is the empty string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso_time(value)
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
        return iso_time(value)
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
    """A cell for people: shorter floats, the rest as in CSV."""
    if isinstance(value, float) and not math.isnan(value) and value != int(value):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.2f}"
    return text_value(value).replace("\n", "\\n")


# --------------------------------------------------------------------------- writers


def write_rows(
    out: IO[str], fmt: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Write ``rows`` in ``fmt``; returns how many were written."""
    writer = _WRITERS[fmt]
    return writer(out, list(columns), iter(rows))


def _csv(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]]) -> int:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([text_value(v) for v in row])
        count += 1
    return count


def _jsonl(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]]) -> int:
    count = 0
    for row in rows:
        record = {c: json_value(v) for c, v in zip(columns, row, strict=True)}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _json(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]]) -> int:
    count = 0
    out.write("[")
    for row in rows:
        record = {c: json_value(v) for c, v in zip(columns, row, strict=True)}
        out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(record, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _table(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]]) -> int:
    raw = list(rows)
    # Numbers align right, judged on the values rather than their text.
    numeric = [_is_numeric([row[i] for row in raw]) for i in range(len(columns))]
    cells = [[_display(v) for v in row] for row in raw]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        parts = [
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(parts).rstrip() + "\n")
    out.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")
    return len(cells)


def _markdown(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]]) -> int:
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", "<br>")

    out.write("| " + " | ".join(cell(c) for c in columns) + " |\n")
    out.write("|" + "|".join("---" for _ in columns) + "|\n")
    count = 0
    for row in rows:
        out.write("| " + " | ".join(cell(_display(v)) for v in row) + " |\n")
        count += 1
    return count


_WRITERS: dict[str, Callable[[IO[str], list[str], Iterator[Sequence[Any]]], int]] = {
    "csv": _csv,
    "json": _json,
    "jsonl": _jsonl,
    "table": _table,
    "markdown": _markdown,
}


def _is_numeric(values: Sequence[Any]) -> bool:
    return any(v is not None for v in values) and all(
        v is None or (isinstance(v, int | float | Decimal) and not isinstance(v, bool))
        for v in values
    )


@contextmanager
def open_output(output: str | None) -> Iterator[IO[str]]:
    """Standard output, or FILE written under a temporary name and renamed when done."""
    if output in (None, "-"):
        yield sys.stdout
        return
    path = Path(str(output))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str | None,
    output: str | None,
) -> int:
    """Write a result where the output options say; returns the row count."""
    chosen = choose_format(fmt, output)
    with open_output(output) as out:
        return write_rows(out, chosen, columns, rows)
