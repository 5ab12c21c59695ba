"""Reading the service's state through its REST API, within its rate limits.

Every request goes through :meth:`ServiceClient.get_json`, which waits out a
``429`` or ``503`` (the per-plan limiter; a proxy's ``502`` or ``504`` too)
for the server's ``Retry-After``, else a doubling delay, as
:func:`rate_limit_delay` decides; the waiting is
done on an injected clock. The paging of each endpoint is the service's own:
a ``nextCursor`` for consent bundles, ``page``/``pageSize``/``total`` for
webhook deliveries, one response for the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from ..clock import Clock
from ..retry import Doubling, parse_retry_after
from ..settings import Secret

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""Answers worth asking again: the per-plan limiter (429, 503) and a proxy
in front of the service (502, 504)."""
RATE_LIMIT_DELAYS = Doubling(1.0, 60.0)
"""The delays after such an answer without ``Retry-After``."""
RATE_LIMIT_ATTEMPTS = 8
"""Rate-limited answers in a row after which a request gives up."""
PAGE_SIZE = 100
"""The largest page the service serves (consent bundles, webhook deliveries)."""


class ReconcileError(Exception):
    """The service's state could not be read."""


class ServiceAuthError(ReconcileError):
    """The service rejected the API key (401 or 403)."""


class ServiceUnavailable(ReconcileError):
    """The service could not be reached, or kept refusing with 429/5xx."""


def rate_limit_delay(
    status: int, retry_after: str | None, failures: int, now: float
) -> float | None:
    """The wait before asking again after a rate-limited answer; None to give up.

    ``failures`` is the number of rate-limited answers to this request
    before this one; ``now`` is Unix time (for an HTTP-date ``Retry-After``).
    """
    if status not in RETRY_STATUSES or failures + 1 >= RATE_LIMIT_ATTEMPTS:
        return None
    asked = parse_retry_after(retry_after, now)
    return asked if asked is not None else RATE_LIMIT_DELAYS.delay(failures)


class ServiceClient:
    """GET requests to the service with the API key, counted, rate limits honoured."""

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        clock: Clock,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {api_key.reveal()}",
                "Accept": "application/json",
            },
            timeout=timeout,
            transport=transport,
        )
        self._clock = clock
        self.requests = 0
        self.rate_limited = 0  # answers waited out (429, 503, 502, 504)
        self.waited = 0.0  # seconds spent waiting them out

    def close(self) -> None:
        self._http.close()

    def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        """The JSON body of ``GET path``; raises a :class:`ReconcileError` when there is none."""
        failures = 0
        while True:
            self.requests += 1
            try:
                response = self._http.get(path, params=dict(params or {}))
            except httpx.HTTPError as exc:
                raise ServiceUnavailable(f"GET {path}: {type(exc).__name__}") from None
            if response.status_code in (401, 403):
                raise ServiceAuthError(f"GET {path}: the service answered {response.status_code}")
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError:
                    raise ReconcileError(f"GET {path}: the answer is not JSON") from None
            delay = rate_limit_delay(
                response.status_code,
                response.headers.get("retry-after"),
                failures,
                self._clock.now().timestamp(),
            )
            if delay is None:
                kind = ServiceUnavailable if response.status_code >= 429 else ReconcileError
                raise kind(f"GET {path}: the service answered {response.status_code}")
            failures += 1
            self.rate_limited += 1
            self.waited += delay
            self._clock.sleep(delay)

    def listing(
        self, path: str, key: str, params: Mapping[str, str | int] | None = None
    ) -> list[Any]:
        """The list under ``key`` in the answer to ``GET path``."""
        body = self.get_json(path, params)
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ReconcileError(f"GET {path}: the answer has no list {key!r}")
        return items

    def cursor_pages(self, path: str, key: str) -> Iterator[Any]:
        """Every item of a listing paged by ``limit`` and ``nextCursor``."""
        params: dict[str, str | int] = {"limit": PAGE_SIZE}
        seen: set[str] = set()
        while True:
            body = self.get_json(path, params)
            items = body.get(key) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ReconcileError(f"GET {path}: the answer has no list {key!r}")
            yield from items
            cursor = body.get("nextCursor")
            if not isinstance(cursor, str) or not items or cursor in seen:
                return
            seen.add(cursor)
            params["cursor"] = cursor

    def numbered_pages(self, path: str, key: str) -> Iterator[Any]:
        """Every item of a listing paged by ``page``, ``pageSize`` and ``total``."""
        page = 1
        while True:
            body = self.get_json(path, {"page": page, "pageSize": PAGE_SIZE})
            items = body.get(key) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ReconcileError(f"GET {path}: the answer has no list {key!r}")
            yield from items
            total = body.get("total")
            if not items or not isinstance(total, int) or page * PAGE_SIZE >= total:
                return
            page += 1
