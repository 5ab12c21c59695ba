"""The formats rows are written in: CSV, JSON, JSON Lines, and (from ``table``) table and Markdown.

CSV goes through the one CSV writer the exports and ``report``/``sql`` use
(``queries.export.csvfile``): the same quoting, line ends and NULL.

JSON and JSON Lines can carry fields beside the columns, the same in every
record (a report's ``uncovered`` time): added after the row's own, they leave
the records' shape and keys as they were.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

from ..export.csvfile import write_rows_csv
from .options import Layout
from .table import write_markdown, write_table
from .values import csv_value, json_value

# Rows written anywhere but a terminal or a file: LF line ends, a plain table.
PLAIN = Layout()


def write_rows(
    out: IO[str],
    fmt: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    layout: Layout = PLAIN,
    json_fields: Mapping[str, Any] | None = None,
) -> int:
    """Write ``rows`` in ``fmt``; returns how many were written.

    ``json_fields`` are added to every record of JSON and JSON Lines output
    (other formats have no place for them).
    """
    if json_fields and fmt in ("json", "jsonl"):
        extra = {name: json_value(value) for name, value in json_fields.items()}
        records = _records(columns, rows, extra)
        return _write_json(out, records) if fmt == "json" else _write_jsonl(out, records)
    writer = _WRITERS[fmt]
    return writer(out, list(columns), iter(rows), layout)


def _records(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], extra: Mapping[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    for row in rows:
        record = {c: json_value(v) for c, v in zip(columns, row, strict=True)}
        if extra:
            record.update(extra)
        yield record


def _csv(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], layout: Layout) -> int:
    cells = ([csv_value(v) for v in row] for row in rows)
    return write_rows_csv(out, columns, cells, crlf=layout.crlf)


def _jsonl(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], _layout: Layout) -> int:
    return _write_jsonl(out, _records(columns, rows))


def _json(out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], _layout: Layout) -> int:
    return _write_json(out, _records(columns, rows))


def _write_jsonl(out: IO[str], records: Iterator[dict[str, Any]]) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def _write_json(out: IO[str], records: Iterator[dict[str, Any]]) -> int:
    count = 0
    out.write("[")
    for record in records:
        out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(record, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


_WRITERS: dict[str, Callable[[IO[str], list[str], Iterator[Sequence[Any]], Layout], int]] = {
    "csv": _csv,
    "json": _json,
    "jsonl": _jsonl,
    "table": write_table,
    "markdown": write_markdown,
}
