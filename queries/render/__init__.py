"""One writer for every command that prints rows: table, CSV, JSON, JSON Lines, Markdown.

Values are written the same way everywhere: timestamps as ISO 8601 UTC with
``Z``, dates as ``YYYY-MM-DD``, NULL as an empty CSV field (the empty string
as ``""``) or JSON ``null``. CSV is the exports' CSV writer's.

Where rows go decides two things. CSV lines end with CRLF in files (RFC 4180)
and with LF on a pipe or a terminal, as other command-line tools write them.
A table on a terminal fits its width and ends with a ``(N rows)`` footer; a
table anywhere else holds every column and only the rows.

The modules: ``options`` (``--format``, ``-o``, where rows go), ``values``
(one value as text or JSON), ``table`` (tables and Markdown), ``writers``
(each format), ``output`` (standard output or FILE, written durably).
"""

from __future__ import annotations

from .options import (
    FORMATS,
    SUFFIX_FORMATS,
    UNSUFFIXED_FORMAT,
    FormatConflict,
    Layout,
    OutputError,
    check_destination,
    crlf_for,
    layout_for,
    output_format,
)
from .output import open_output, render, replace_output
from .values import Column, column_format, csv_value, json_value, text_value
from .writers import write_rows

__all__ = [
    "FORMATS",
    "SUFFIX_FORMATS",
    "UNSUFFIXED_FORMAT",
    "Column",
    "FormatConflict",
    "Layout",
    "OutputError",
    "check_destination",
    "column_format",
    "crlf_for",
    "csv_value",
    "json_value",
    "layout_for",
    "open_output",
    "output_format",
    "render",
    "replace_output",
    "text_value",
    "write_rows",
]
