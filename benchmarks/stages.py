"""Where ingest's time goes: each stage of the reader and of the writer alone, per event.

The end-to-end figures in "Ingest" say how fast the whole pipeline runs; this
benchmark says what each part of it costs, so that the ratio there can be
read. Every stage runs in this one process on the same events, with the
collector set as during a run (``ingest.reader.GC_THRESHOLDS``), ``--runs``
times in turn; the table gives the median CPU microseconds per event and the
spread.

Reader stages, from the simulator's backlog rendered as SSE bytes and cut into
64 KiB reads: SSE framing (``FrameDecoder``), each frame's SQLite row
(``frame_rows``: JSON, checks and row in one pass for the usual frame), the chunk's
times summarised and the rows' digests from the keys the reader guesses
(``prepare_rows``, keys from 1 as in a fresh archive), and the message for the
data pipe (``reader_wire.encode``); the writer's side of the pipe (``decode``).
Writer stages, on the rows those stages made: ``Store.write_batch``
of 1000-row batches into a fresh SQLite archive with those digests (sealed: the
guesses hold, as they do in a run after its first batch) and with the chain
stubbed out (``benchmarks.unsealed.NoSeal``), against the
SQLite ceiling of ``benchmarks.ingest`` on the same rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import ingest.store
from benchmarks.ingest import sqlite_ceiling, timed
from benchmarks.machine import facts_line
from benchmarks.results import write_section
from benchmarks.unsealed import NoSeal
from ingest import migrate
from ingest.frame_rows import frame_rows
from ingest.prepare import DIGEST_SIZE, prepare_rows, sqlite_time
from ingest.reader import GC_THRESHOLDS, Normalised
from ingest.reader_wire import decode, encode
from ingest.resume import latest_plausible
from ingest.simulator.generator import generate_events
from ingest.sse import Frame, FrameDecoder
from ingest.store import Store

READ = 64 * 1024
BATCH = 1000


def sse_bytes(count: int) -> bytes:
    """The simulator's backlog for seed 42 as the stream sends it."""
    start = datetime.now(timezone.utc) - timedelta(days=1)
    frames = [
        b"data: %b\n\n" % json.dumps(envelope, separators=(",", ":")).encode()
        for envelope in generate_events(42, start, count, 86400 / max(count, 1), "live")
    ]
    return b"".join(frames)


def reader_stages(data: bytes) -> tuple[dict[str, float], list[Normalised]]:
    """CPU seconds of each stage over ``data`` up to the writer's reading of the pipe
    message, and the chunks as the writer read them.

    One read at a time through every stage, as the reader process goes: only a
    read's objects (and its message, until read) are alive at once, so the collector
    and the memory allocator see what they see in a run.
    """
    received_at = datetime.now(timezone.utc)
    bound = latest_plausible(received_at)
    names: tuple[str, ...] = ("SSE framing", "SQLite rows", "times and digests")
    names = (*names, "pipe message, written", "pipe message, read")
    seconds = dict.fromkeys(names, 0.0)
    read: list[Normalised] = []
    decoder = FrameDecoder()
    received_text = sqlite_time(received_at)
    next_key = 1
    clock = time.process_time
    for i in range(0, len(data), READ):
        t0 = clock()
        frames = [f for f in decoder.feed(data[i : i + READ]) if isinstance(f, Frame)]
        t1 = clock()
        rows, times, _ = frame_rows(frames, "default", received_text)
        t2 = clock()
        p = prepare_rows(rows, times, "stream", bound, first_key=next_key, first_row=next_key - 1)
        t3 = clock()
        chunk = Normalised([], received_at, p)
        next_key += len(p.rows)
        message = encode(chunk)
        t4 = clock()
        back = decode(message)
        t5 = clock()
        del message
        assert isinstance(back, Normalised)
        read.append(back)
        spent = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
        for name, part in zip(names, spent, strict=True):
            seconds[name] += part
    return seconds, read


def write_all(path: Path, made: list[Normalised], sealed: bool) -> float:
    """CPU seconds of ``Store.write_batch`` storing every row, 1000 rows a batch."""
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    rows: list[tuple[Any, ...]] = []
    parts: list[bytes] = []
    for m in made:
        assert m.prepared is not None and m.prepared.digests is not None
        assert m.prepared.first_key == len(rows) + 1
        rows += m.prepared.rows
        parts.append(m.prepared.digests)
    digests = b"".join(parts)
    gc.collect()
    store = Store.open(url)
    saved = ingest.store.Sealer
    if not sealed:
        ingest.store.Sealer = NoSeal  # type: ignore[assignment,misc]
    try:

        def work() -> None:
            for i in range(0, len(rows), BATCH):
                part = rows[i : i + BATCH]
                store.write_batch(
                    "default",
                    None,
                    [],
                    rows=part,
                    digests=digests[DIGEST_SIZE * i : DIGEST_SIZE * (i + BATCH)],
                    first_key=i + 1,
                    lines=[None] * len(part),
                )

        seconds = timed(work).cpu_seconds
    finally:
        ingest.store.Sealer = saved  # type: ignore[misc]
        store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    print(f"rendering a {args.events:,}-event backlog as SSE...", flush=True)
    data = sse_bytes(args.events)
    gc.set_threshold(*GC_THRESHOLDS)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gxa-stages-") as tmp:
        for run in range(args.runs):
            seconds, made = reader_stages(data)
            events = sum(len(m.prepared.rows) for m in made if m.prepared is not None)
            assert events == args.events, (events, args.events)
            rows = [row for m in made if m.prepared is not None for row in m.prepared.rows]
            seconds[SEALED] = write_all(Path(tmp, "sealed.db"), made, True)
            seconds["write_batch, without sealing"] = write_all(Path(tmp, "bare.db"), made, False)
            seconds["ceiling: sqlite3, prepared rows"] = sqlite_ceiling(
                rows, Path(tmp, "ceiling.db")
            ).cpu_seconds
            for stage, value in seconds.items():
                samples.setdefault(stage, []).append(value / args.events * 1e6)
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in samples.items()))
            del made, rows
    table = render(samples, args)
    print()
    print(table)
    if not args.no_write:
        write_section("stages", table, METHOD)


def render(samples: dict[str, list[float]], args: argparse.Namespace) -> str:
    command = f"python -m benchmarks.stages --events {args.events} --runs {args.runs}"
    lines = [
        facts_line(command),
        "",
        "| stage | side | CPU µs per event (median) | spread |",
        "|---|---|---:|---|",
    ]
    for stage, values in samples.items():
        side = "writer" if stage in WRITER_STAGES else "reader"
        spread = f"{min(values):.2f} to {max(values):.2f}" if len(values) > 1 else "one run"
        lines.append(f"| {stage} | {side} | {statistics.median(values):.2f} | {spread} |")
    reader = sum(statistics.median(v) for k, v in samples.items() if k not in WRITER_STAGES)
    lines.append(f"| **reader stages, total** | reader | {reader:.2f} | |")
    writer = sum(statistics.median(samples[k]) for k in ("pipe message, read", SEALED))
    lines.append(f"| **writer stages, sealed, total** | writer | {writer:.2f} | |")
    return "\n".join(lines)


METHOD = """## Ingest stages

Command: `make bench-stages` (= `python -m benchmarks.stages --events 300000`);
`make bench-stages-quick` runs 30,000 events without writing this file.

What each part of the ingest pipeline costs on its own, so that the end-to-end
ratios in "Ingest" can be read. All stages run in one process on the same
events (the simulator's backlog for seed 42, rendered as the stream sends it and
cut into 64 KiB reads), with the collector set as during a run, `--runs` times
in turn; the table gives the median CPU microseconds per event and the spread.

- **Reader stages** (the reader process's work, in the order it does it, one
  read at a time through all of them, so that only one read's objects are
  alive at once, as in a run): SSE framing; each frame's SQLite row (JSON,
  checks and row in one pass for the usual frame, `ingest.frame_rows`); the
  chunk's times summarised and the rows' digests (from the keys the reader
  guesses); the message for the data pipe. Not included: HTTP, and the pipe's
  system calls.
- **Writer stages** (the ingest process's work): reading each message as it is
  made; `Store.write_batch` of 1000-row batches into a fresh SQLite archive,
  sealed (the reader's digests checked against the keys the rows took, the
  link and the head) and with the chain stubbed
  out (`benchmarks.unsealed.NoSeal`); and the SQLite ceiling of "Ingest"
  storing the same rows. The writer's total is reading the messages plus the
  sealed `write_batch`.
- On two cores the pipeline runs both sides at once, so end-to-end ingest is at
  best as fast as the slower side, and only if the two sides together fit in
  two cores: for 0.7x the ceiling, each side may cost at most 1/0.7 of the
  ceiling per event, and both together twice that."""


SEALED = "write_batch, sealed"

WRITER_STAGES = (
    "pipe message, read",
    SEALED,
    "write_batch, without sealing",
    "ceiling: sqlite3, prepared rows",
)


if __name__ == "__main__":
    main()
