"""SIGTERM and SIGINT as a request to stop, for the ingest run."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def handle_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGTERM/SIGINT call ``handler`` once; a second one gets the default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def once(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        handler(signum, frame)

    previous = {sig: signal.signal(sig, once) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
