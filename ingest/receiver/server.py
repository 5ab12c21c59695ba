"""Serving the receiver with uvicorn: bind, serve until SIGTERM or SIGINT, drain, return."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from ..settings import ConfigError
from ..store import safe_url
from .app import Receiver
from .config import ReceiverSettings

log = logging.getLogger("grantex_archive.receiver")


class _Server(uvicorn.Server):
    """uvicorn's server, ending with a return rather than by re-raising the signal.

    A stop by SIGTERM drains the requests in flight and is a normal end
    (exit 0), as for ``ingest``; uvicorn's own handling re-raises the signal
    after its graceful shutdown, which would end the process by it.
    """

    stopped_by: str | None = None

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        def on_signal(signum: int, frame: object) -> None:
            self.stopped_by = signal.Signals(signum).name
            self.should_exit = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or :class:`ConfigError` saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(receiver: Receiver, settings: ReceiverSettings) -> str | None:
    """Serve until a signal; returns the signal's name once the requests in flight are answered."""
    sock = bind(settings.host, settings.port)
    config = uvicorn.Config(
        receiver.app(),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=settings.drain_timeout,
    )
    _route_uvicorn_logs()
    server = _Server(config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "receiving webhooks on http://%s:%d%s for source %r into %s",
        shown,
        port,
        settings.path,
        settings.source,
        safe_url(settings.db_url),
        extra={"fields": {"port": port}},
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return server.stopped_by


def _route_uvicorn_logs() -> None:
    """uvicorn's warnings and errors go where the project's logs go, redacted the same way."""
    ours = logging.getLogger("grantex_archive")
    theirs = logging.getLogger("uvicorn")
    theirs.handlers = list(ours.handlers)
    theirs.setLevel(logging.WARNING)
    theirs.propagate = False
