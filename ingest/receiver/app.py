"""The receiver's HTTP application (Starlette): webhook deliveries in, archive rows out.

A delivery is answered 2xx only once its event is committed (or known to be
archived already), so a crash or an unusable database before the commit
leaves the service to retry. Order of checks: size, signature over the raw
bytes, then parsing; nothing unsigned reaches the archive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import anyio.to_thread
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..database import first_line
from ..events import Event, normalise
from ..store import BatchResult, Received, Store, StoreError
from .config import MAX_BODY_BYTES, ReceiverSettings
from .signature import verify

log = logging.getLogger("grantex_archive.receiver")


class Receiver:
    """Verifies, normalises and stores webhook deliveries for one archive and source."""

    def __init__(
        self, store: Store, settings: ReceiverSettings, now: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self._now = now
        self._secrets = tuple(secret.reveal().encode("ascii") for secret in settings.secrets)
        # One write at a time: the archive sees this receiver as one writer.
        self._writing = threading.Lock()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(self.settings.path, self.deliver, methods=["POST"]),
                Route("/healthz", self.health, methods=["GET"]),
            ]
        )

    async def deliver(self, request: Request) -> JSONResponse:
        body = await _read_body(request, MAX_BODY_BYTES)
        if body is None:
            log.warning("delivery refused (413): body over %d bytes", MAX_BODY_BYTES)
            return _answer(413, error=f"body over {MAX_BODY_BYTES} bytes")
        s = self.settings
        reason = verify(
            request.headers, body, self._secrets, self._now(), s.tolerance, s.allow_legacy
        )
        if reason is not None:
            log.warning("delivery refused (401): %s", reason)
            return _answer(401, error="signature not valid")
        item = normalise(body.decode("utf-8", "surrogateescape"))
        entry = Received(item, datetime.now(timezone.utc))
        try:
            result = await anyio.to_thread.run_sync(self._write, entry)
        except (sa.exc.SQLAlchemyError, StoreError) as exc:
            log.error("delivery not stored (503), the service will retry: %s", first_line(exc))
            return _answer(503, error="archive unavailable")
        if not isinstance(item, Event):
            log.warning("delivery rejected (400), kept in rejected_events: %s", item.reason)
            return _answer(400, error=item.reason)
        outcome = _outcome(result)
        log.info(
            "webhook %s %s: %s",
            item.id,
            item.type,
            outcome,
            extra={"fields": {"event_id": item.id, "type": item.type, "outcome": outcome}},
        )
        return _answer(200, status=outcome, id=item.id)

    def _write(self, entry: Received) -> BatchResult:
        with self._writing:
            return self.store.write_batch(self.settings.source, None, [entry], channel="webhook")

    async def health(self, _request: Request) -> JSONResponse:
        try:
            await anyio.to_thread.run_sync(self._ping)
        except (sa.exc.SQLAlchemyError, StoreError) as exc:
            log.warning("health check: archive unavailable: %s", first_line(exc))
            return _answer(503, status="archive unavailable")
        return _answer(200, status="ok")

    def _ping(self) -> None:
        with self.store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")


def _outcome(result: BatchResult) -> str:
    if result.inserted:
        return "stored"
    return "conflict" if result.conflicts else "duplicate"


def _answer(code: int, **fields: str) -> JSONResponse:
    return JSONResponse(fields, status_code=code)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it is longer than ``limit`` (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
