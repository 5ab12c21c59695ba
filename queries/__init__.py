"""Analytics and audit exports over the archive: DuckDB over a Parquet copy.

The functions the commands run, for Python callers (see :mod:`queries.api`)::

    import queries

    queries.report("revocations-by-actor", "sqlite:///grantex-archive.db", by="month")
"""

from __future__ import annotations

from .api import coverage, export_archive, open_copy, prepare_report, query, report, status

__all__ = ["coverage", "export_archive", "open_copy", "prepare_report", "query", "report", "status"]
