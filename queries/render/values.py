"""How one value is written: as text (CSV, tables), as JSON, and how a table column shows numbers.

Values are written the same way everywhere: timestamps as ISO 8601 UTC with
``Z`` (``ingest.timestamps.format_timestamp``), dates as ``YYYY-MM-DD``, NULL
as an empty CSV field or JSON ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from ingest.timestamps import format_timestamp


def text_value(value: Any) -> str:
    """A cell as text; NULL (and NaN) is the empty string."""
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


def csv_value(value: Any) -> str | None:
    """A cell for the CSV writer: its text, None for NULL (and NaN), written as an empty field."""
    text = text_value(value)
    return None if text == "" and not isinstance(value, str) else text


def json_value(value: Any) -> Any:
    """A cell as a JSON value: NaN and infinities are null, times are text."""
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


def display(value: Any) -> str:
    """A cell for people that is not a number: as in CSV, on one line."""
    return text_value(value).replace("\n", "\\n")


# Decimals shown at most in a column of fractions; a column whose values are
# all smaller than this shows them in scientific notation instead of as zeros.
MAX_DECIMALS = 4
TINY = 10.0**-MAX_DECIMALS


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
        return Column(name, False, display)
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
