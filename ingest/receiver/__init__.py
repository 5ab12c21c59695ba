"""``grantex-archive receive``: Grantex webhook deliveries as a second channel into the archive.

The service retries a webhook delivery (about five attempts over several
minutes) for ``grant.created``, ``grant.revoked`` and ``token.issued``,
with the stream's exact JSON and event id. The receiver verifies each
delivery's signature, stores the event through the same normalisation and
store as ``ingest`` (an event both channels deliver is stored once;
``events.channel`` says which came first) and answers 2xx only after the
commit. It takes no ingest lock, so it runs beside ``ingest`` on the same
archive; from Python::

    from ingest.receiver import ReceiverSettings, run_receiver
    from ingest.settings import Secret

    run_receiver(ReceiverSettings(db_url="sqlite:///archive.db", host="127.0.0.1",
                                  port=8080, secrets=(Secret("..."),)))
"""

from __future__ import annotations

import logging

from .app import Receiver
from .config import DEFAULT_PATH, ReceiverSettings, check_path, load_secrets, parse_listen
from .server import serve

__all__ = [
    "DEFAULT_PATH",
    "Receiver",
    "ReceiverSettings",
    "check_path",
    "load_secrets",
    "parse_listen",
    "run_receiver",
]

log = logging.getLogger("grantex_archive.receiver")


def run_receiver(settings: ReceiverSettings) -> None:
    """Open (or create) the archive and serve until SIGTERM or SIGINT.

    Raises :class:`~ingest.settings.ConfigError` when it cannot listen, and
    :class:`~ingest.store.StoreError` (or a subclass) when the archive cannot
    be used; returns once the requests in flight have been answered.
    """
    from .. import migrate  # Alembic loads only for the commands that need it

    store = migrate.open_archive(settings.db_url)
    try:
        stopped_by = serve(Receiver(store, settings), settings)
    finally:
        store.close()
    if stopped_by:
        log.info("stopped by %s after answering the deliveries in flight", stopped_by)
