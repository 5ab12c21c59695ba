"""Hand-built live-envelope streams, ingested through the real CLI, and reports read back."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.conftest import invoke
from tests.scripted_server import Reply, ScriptedServer

CAPTURE = Path(__file__).parent / "data" / "live-capture-full.sse"


def stamp(ms: int) -> str:
    """A live ``createdAt`` for a unix time in milliseconds."""
    at = datetime.fromtimestamp(ms / 1000, timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sse(events: list[tuple[str, int, dict[str, Any]]]) -> bytes:
    """Live frames for (type, unix ms, data) triples, ids ``evt_0``, ``evt_1``, ..."""
    return b"".join(
        b"data: "
        + json.dumps(
            {"id": f"evt_{n}", "type": kind, "createdAt": stamp(ms), "data": data}
        ).encode()
        + b"\n\n"
        for n, (kind, ms, data) in enumerate(events)
    )


def ingest_body(url: str, body: bytes) -> None:
    """Serve ``body`` once from a loopback server and ingest it with the real CLI."""
    with ScriptedServer([Reply(chunks=[body], hold=5, keepalive=0.1)]) as server:
        result = invoke(
            ["ingest", "--db", url, "--base-url", server.base_url, "--until-idle", "0.5",
             "--max-runtime", "20"]
        )  # fmt: skip
    assert result.exit_code == 0, result.output


def report(url: str, tmp_path: Path, name: str, *args: str) -> list[dict[str, Any]]:
    """A named report's rows, as the CLI's JSON output gives them.

    Each row's ``uncovered`` field (the window's gaps in coverage: here the
    time since the one ingest run ended) is checked to be on every row or on
    none, then left out, so that the rows compare with the report's columns.
    """
    out = invoke(
        ["report", name, "--db", url, "--analytics-dir", str(tmp_path / "copy"),
         "--format", "json", *args]
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    uncovered = [row.pop("uncovered", None) for row in rows]
    assert len({json.dumps(u) for u in uncovered}) <= 1
    return rows
