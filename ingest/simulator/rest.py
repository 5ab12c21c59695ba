"""The service's read endpoints over the simulator's state, with the live paths, fields,
paging and per-plan rate limit.

``GET /v1/grants`` (and ``/v1/grants/:id``), ``/v1/compliance/export/grants``,
``/v1/consent-bundles`` (cursor and limit), ``/v1/dpdp/consent-records`` (newest 100
unless ``dataPrincipalId``), ``/v1/budget/allocations``, ``/v1/webhooks`` and
``/v1/webhooks/:id/deliveries`` (page and pageSize) answer as the live routes do. Past
``rest_rate_limit`` requests in a window of 60 s (times ``time_scale``) a request gets
``429 RATE_LIMIT_EXCEEDED`` with ``Retry-After``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from .handler import retry_after_text
from .ids import format_ms, parse_since_ms
from .state import GrantRow, ServiceState, cents_text
from .webhooks import Deliverer

WINDOW_S = 60.0
_GRANT = re.compile(r"^/v1/grants/([^/]+)$")
_DELIVERIES = re.compile(r"^/v1/webhooks/([^/]+)/deliveries$")
_BOUNDS = ("since", "until")

Answer = tuple[int, dict[str, Any]]


class RateWindow:
    """A fixed window of ``limit`` requests per ``window`` seconds, on an injected clock."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._used = 0

    def check(self) -> tuple[bool, int, float]:
        """Count a request: (allowed, requests left, seconds until the window resets)."""
        with self._lock:
            now = self._clock()
            if now - self._start >= self.window:
                self._start, self._used = now, 0
            reset = self._start + self.window - now
            if self._used >= self.limit:
                return False, 0, reset
            self._used += 1
            return True, self.limit - self._used, reset


def error(status: int, code: str, message: str) -> Answer:
    return status, {"message": message, "code": code}


def grant_json(grant: GrantRow, export: bool) -> dict[str, Any]:
    """A grant as ``/v1/grants`` shows it, or as the compliance export does."""
    body: dict[str, Any] = {
        "grantId": grant.grant_id, "agentId": grant.agent_id,
        "principalId": grant.principal_id, "developerId": "dev_simulator",
        "scopes": grant.scopes, "status": grant.status, "issuedAt": grant.issued_at,
        "expiresAt": grant.expires_at,
    }  # fmt: skip
    if export:
        body["revokedAt"] = grant.revoked_at
        body["delegationDepth"] = grant.depth
    else:
        if grant.revoked_at is not None:
            body["revokedAt"] = grant.revoked_at
        body["delegationDepth"] = 0  # the list route selects no depth column
    return body


def newest_first(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: row[key], reverse=True)


class RestApi:
    """Answers the read endpoints; ``state`` is caught up with the log on each request."""

    def __init__(
        self, state: ServiceState, webhook: Deliverer | None, limit: int, window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._state = state
        self._webhook = webhook
        self.window = RateWindow(limit, window, clock)

    def handles(self, path: str) -> bool:
        return route_of(path) is not None

    def answer(self, path: str, query: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Status, JSON body and extra headers of one authorized GET."""
        allowed, left, reset = self.window.check()
        headers = {
            "X-RateLimit-Limit": str(self.window.limit),
            "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        if not allowed:
            headers["Retry-After"] = retry_after_text(round(reset, 3))
            message = f"Plan rate limit exceeded, retry in {math.ceil(reset)} seconds"
            return (*error(429, "RATE_LIMIT_EXCEEDED", message), headers)
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        lock = self._state.catch_up()
        with lock:
            status, body = self._route(path, params)
        return status, body, headers

    # Kept whole: the route table, one branch per endpoint.
    def _route(self, path: str, params: dict[str, str]) -> Answer:
        state = self._state
        route = route_of(path)
        if route == "grants":
            grants = [
                grant_json(g, False) for g in state.grants.values()
                if all(params.get(k) in (None, v) for k, v in (
                    ("agentId", g.agent_id), ("principalId", g.principal_id),
                    ("status", g.status)))
            ]  # fmt: skip
            return 200, {"grants": newest_first(grants, "issuedAt")}
        if route == "grant":
            match = _GRANT.match(path)
            grant = state.grants.get(match.group(1)) if match else None
            if grant is None:
                return error(404, "NOT_FOUND", "Grant not found")
            return 200, grant_json(grant, False)
        if route == "export":
            return self._export(params)
        if route == "bundles":
            return self._bundles(params)
        if route == "records":
            records = newest_first(list(state.records.values()), "createdAt")
            principal = params.get("dataPrincipalId")
            if principal:
                records = [r for r in records if r["dataPrincipalId"] == principal]
            else:
                records = records[:100]
            return 200, {"records": records, "totalRecords": len(records)}
        if route == "allocations":
            rows = [
                {"id": a.id, "grantId": a.grant_id, "developerId": "dev_simulator",
                 "initialBudget": cents_text(a.initial_c),
                 "remainingBudget": cents_text(a.remaining_c), "currency": "USD",
                 "createdAt": a.created_at, "updatedAt": a.updated_at}
                for a in state.allocations.values()
            ]  # fmt: skip
            return 200, {"allocations": newest_first(rows, "createdAt")}
        if route == "webhooks":
            hooks = []
            if self._webhook is not None:
                hook = self._webhook
                hooks.append({"id": hook.webhook_id, "url": hook.url, "events": list(hook.types),
                              "createdAt": format_ms(hook.created_ms)})  # fmt: skip
            return 200, {"webhooks": hooks}
        return self._deliveries(path, params)

    def _export(self, params: dict[str, str]) -> Answer:
        """The compliance export, newest issue first; ``since``/``until`` compared as instants."""
        try:
            since, until = (parse_since_ms(params[k]) if k in params else None for k in _BOUNDS)
        except ValueError:
            # The service casts them with ``::timestamptz``; a bad one fails the query.
            return error(500, "INTERNAL_ERROR", "An unexpected error occurred")
        status = params.get("status")
        grants = [
            grant_json(g, True) for g in self._state.grants.values()
            if (status is None or g.status == status)
            and (since is None or parse_since_ms(g.issued_at) >= since)
            and (until is None or parse_since_ms(g.issued_at) <= until)
        ]  # fmt: skip
        generated = format_ms(time.time_ns() // 1_000_000)
        body = {"generatedAt": generated, "total": len(grants)}
        return 200, {**body, "grants": newest_first(grants, "issuedAt")}

    def _bundles(self, params: dict[str, str]) -> Answer:
        try:
            limit = min(max(int(params.get("limit", "50")), 1), 100)
        except ValueError:
            limit = 50
        try:
            cursor = parse_since_ms(params["cursor"]) if params.get("cursor") else None
        except ValueError:
            return error(400, "BAD_REQUEST", "cursor must be a valid date-time")
        rows = [
            b for b in self._state.bundles.values()
            if all(params.get(k) in (None, "", b[k]) for k in ("status", "agentId"))
            and (cursor is None or parse_since_ms(b["createdAt"]) < cursor)
        ]  # fmt: skip
        page = newest_first(rows, "createdAt")[:limit]
        body: dict[str, Any] = {"bundles": page}
        if len(page) == limit:
            body["nextCursor"] = page[-1]["createdAt"]
        return 200, body

    def _deliveries(self, path: str, params: dict[str, str]) -> Answer:
        match = _DELIVERIES.match(path)
        hook = self._webhook
        if match is None or hook is None or match.group(1) != hook.webhook_id:
            return error(404, "NOT_FOUND", "Webhook not found")
        status = params.get("status")
        if status is not None and status not in ("pending", "delivered", "failed"):
            return error(400, "BAD_REQUEST", "status must be one of: pending, delivered, failed")
        try:
            page, size = int(params.get("page", "1")), int(params.get("pageSize", "20"))
        except ValueError:
            page = size = 0
        if not 1 <= page <= 1_000_000 or size < 1:
            return error(400, "BAD_REQUEST", "page and pageSize must be positive integers")
        size = min(size, 100)
        rows = [d for d in reversed(hook.deliveries()) if status in (None, d.status)]
        chosen = rows[(page - 1) * size : page * size]
        deliveries = [
            {"id": d.id, "webhookId": d.webhook_id, "eventId": d.event_id,
             "eventType": d.event_type, "status": d.status, "attempts": d.attempts,
             "maxAttempts": 5, "url": hook.url, "lastError": d.last_error,
             "createdAt": format_ms(d.created_ms),
             "deliveredAt": None if d.delivered_ms is None else format_ms(d.delivered_ms)}
            for d in chosen
        ]  # fmt: skip
        return 200, {"deliveries": deliveries, "total": len(rows), "page": page, "pageSize": size}


def route_of(path: str) -> str | None:
    """Which read endpoint ``path`` is, or None."""
    fixed = {
        "/v1/grants": "grants", "/v1/compliance/export/grants": "export",
        "/v1/consent-bundles": "bundles", "/v1/dpdp/consent-records": "records",
        "/v1/budget/allocations": "allocations", "/v1/webhooks": "webhooks",
    }  # fmt: skip
    if path in fixed:
        return fixed[path]
    if _GRANT.match(path):
        return "grant"
    if _DELIVERIES.match(path):
        return "deliveries"
    return None


def send_answer(handler: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Write one JSON answer and close the connection."""
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Connection", "close")
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)
    handler.close_connection = True
