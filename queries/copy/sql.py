"""SQL text shared by the refresher, the grant state and the views.

DuckDB cannot bind a file list or a table function's argument as a
parameter, so paths are quoted into the statement here, in one way.
"""

from __future__ import annotations

from pathlib import Path

from .columns import SEGMENT_COLUMNS, Columns


def sql_text(value: str) -> str:
    """``value`` for use inside a single-quoted SQL literal."""
    return value.replace("'", "''")


def parquet(path: Path) -> str:
    """A table expression reading one Parquet file."""
    return f"read_parquet('{sql_text(str(path))}')"


def file_list(files: list[Path]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join(f"'{sql_text(str(f))}'" for f in files) + "]"


def empty_select(columns: Columns) -> str:
    """A SELECT of no rows with the given typed columns."""
    cols = ", ".join(f"CAST(NULL AS {kind}) AS {name}" for name, kind in columns)
    return f"SELECT {cols} WHERE false"


def events_from(files: list[Path]) -> str:
    """A table expression over event segments (typed and empty when there are none)."""
    if not files:
        return f"(SELECT * FROM ({empty_select(SEGMENT_COLUMNS)}))"
    return f"read_parquet({file_list(files)})"
