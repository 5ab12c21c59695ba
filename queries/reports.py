"""Named reports: the ``.sql`` files in ``queries/reports/`` and their header comments.

A report file starts with comment lines::

    -- name: revocations-by-actor
    -- summary: one line for ``report --list``
    -- options: since, until, source, agent, by     (the flags it takes)
    -- by: day, week, month, agent, via             (values --by accepts)
    -- default-by: day                              (optional)
    -- drops: via=actor                             (optional: columns a --by value leaves out)
    --
    -- What it computes, exactly, in prose.

The SQL uses ``$since``, ``$until`` (TIMESTAMPTZ or NULL), ``$source``,
``$agent`` (text or NULL) and ``$by`` (text or NULL). The time window and the
agent filter are placeholders (``{window(occurred_at)}``, ``{agent_events}``:
see ``queries.filter_sql``), the same SQL the exports filter with, expanded
when the report is loaded. A report that takes ``--by`` returns a ``period``
column for day/week/month and an ``agent_id`` column for agent; the runner
drops the one that was not asked for, and the columns ``drops`` names for the
``--by`` value given (``--by via`` counts per path alone, without ``actor``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from .filter_sql import PlaceholderError, expand

OPTIONS = ("since", "until", "source", "agent", "by")
PERIODS = ("day", "week", "month")
BY_VALUES = (*PERIODS, "agent", "via")
"""Every value ``--by`` can take; each report's header says which it accepts."""


class ReportError(Exception):
    """An unknown report, or an option the report does not take."""


@dataclass(frozen=True)
class Report:
    name: str
    summary: str
    description: str
    sql: str
    options: tuple[str, ...]
    by: tuple[str, ...] = ()
    default_by: str | None = None
    drops: tuple[tuple[str, str], ...] = ()
    """(--by value, column it leaves out) pairs."""

    def parameters(
        self,
        since: Any = None,
        until: Any = None,
        source: str | None = None,
        agent: str | None = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        given = {"since": since, "until": until, "source": source, "agent": agent, "by": by}
        for name, value in given.items():
            if value is not None and name not in self.options:
                raise ReportError(f"report {self.name!r} does not take --{name}")
        if by is not None and by not in self.by:
            raise ReportError(
                f"report {self.name!r} takes --by {'|'.join(self.by)}, not {by!r}"
                if self.by
                else f"report {self.name!r} does not take --by"
            )
        given["by"] = by if by is not None else self.default_by
        return {k: v for k, v in given.items() if f"${k}" in self.sql}

    def statement(self, by: str | None) -> str:
        """The SQL to run, without the grouping column that ``by`` did not ask for."""
        by = by if by is not None else self.default_by
        drop = []
        if "period" in self.returns and by not in PERIODS:
            drop.append("period")
        if "agent_id" in self.returns and "agent" in self.by and by != "agent":
            drop.append("agent_id")
        drop += [column for value, column in self.drops if value == by]
        if not drop:
            return self.sql
        return f"SELECT * EXCLUDE ({', '.join(drop)}) FROM ({self.sql.rstrip().rstrip(';')})"

    @property
    def returns(self) -> set[str]:
        """Grouping columns this report can return (from its --by values)."""
        out = set()
        if any(b in PERIODS for b in self.by):
            out.add("period")
        if "agent" in self.by:
            out.add("agent_id")
        return out


def parse_report(text: str, filename: str) -> Report:
    meta: dict[str, str] = {}
    prose: list[str] = []
    in_meta = True
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        body = line[2:].strip()
        if (
            in_meta
            and ":" in body
            and body.split(":", 1)[0]
            in (
                "name",
                "summary",
                "options",
                "by",
                "default-by",
                "drops",
            )
        ):
            key, value = body.split(":", 1)
            meta[key] = value.strip()
            continue
        in_meta = False
        if body or prose:
            prose.append(body)
    missing = [k for k in ("name", "summary", "options") if k not in meta]
    if missing:
        raise ReportError(f"{filename}: header lacks {', '.join(missing)}")
    options = tuple(o.strip() for o in meta["options"].split(",") if o.strip())
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ReportError(f"{filename}: unknown options {', '.join(unknown)}")
    by = tuple(b.strip() for b in meta.get("by", "").split(",") if b.strip())
    if set(by) - set(BY_VALUES):
        raise ReportError(
            f"{filename}: unknown --by values {', '.join(sorted(set(by) - set(BY_VALUES)))}"
        )
    drops = tuple(
        (value.strip(), column.strip())
        for value, _, column in (d.partition("=") for d in meta.get("drops", "").split(","))
        if value.strip() and column.strip()
    )
    try:
        sql = expand(text)
    except PlaceholderError as exc:
        raise ReportError(f"{filename}: {exc}") from None
    return Report(
        name=meta["name"],
        summary=meta["summary"],
        description="\n".join(prose).strip(),
        sql=sql,
        options=options,
        by=by,
        default_by=meta.get("default-by") or None,
        drops=drops,
    )


def load_reports() -> dict[str, Report]:
    """Every report shipped in the package, by name."""
    out: dict[str, Report] = {}
    folder = files("queries").joinpath("reports")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            report = parse_report(entry.read_text(encoding="utf-8"), entry.name)
            out[report.name] = report
    return out


def get_report(name: str) -> Report:
    reports = load_reports()
    try:
        return reports[name]
    except KeyError:
        pass
    # `top_agents`, `top-agent`, `revocations`: the name the user most likely meant.
    close = difflib.get_close_matches(name.replace("_", "-").lower(), reports, n=3)
    if close:
        raise ReportError(
            f"no report named {name!r}; did you mean {' or '.join(close)}? "
            "(`grantex-archive report --list` lists them all)"
        )
    raise ReportError(f"no report named {name!r}; the reports are: {', '.join(sorted(reports))}")
