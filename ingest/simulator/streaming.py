"""Writing one client's event stream: frames from the log, keepalives, injected faults.

A stream is a cursor into the :class:`~.history.History`. Without filters or faults it
ships raw slices of the log's buffer in large chunked writes; otherwise it walks the
frames one by one to skip types, slip in malformed frames and cut the connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable

from .config import SimulatorConfig, SimulatorStats
from .faults import MalformedFrames, torn_chunk
from .history import History

# ~256 KiB per socket write keeps syscall and chunk-framing overhead negligible while a
# single write still finishes quickly enough for stop() and fault checks between writes.
_WRITE_CHUNK = 256 * 1024
# Idle streams wake this often to notice a client that hung up; without it a closed
# connection would keep its slot (and trigger false 429s) until the next keepalive write.
_IDLE_POLL_S = 0.1
_KEEPALIVE_FRAME = b": keepalive\n\n"


class StreamClosed(Exception):
    """The stream must end now (stop(), client gone or an injected drop)."""


class Conn:
    """Per-connection write state: the response head, chunked framing, fault counters.

    ``head`` (status line and headers) is held back and goes out with the first bytes
    of the body, as on the live service, which does not flush its headers.
    """

    __slots__ = ("good", "head", "sock", "written")

    def __init__(self, sock: socket.socket, head: bytes = b"") -> None:
        self.sock = sock
        self.head = head
        self.good = 0  # well-formed events sent on this connection
        self.written = False  # anything written since the idle clock was last reset

    def write(self, payload: bytes | bytearray) -> None:
        if payload:
            self.send(b"".join((b"%x\r\n" % len(payload), payload, b"\r\n")))
            self.written = True

    def send(self, data: bytes | bytearray) -> None:
        """Send raw bytes, preceded by the response head if it is still held."""
        if self.head:
            data = self.head + data
            self.head = b""
        self.sock.sendall(data)


def peer_closed(sock: socket.socket) -> bool:
    """Whether the client has hung up (or the socket is unusable), without blocking."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        # Anything the client sends after its request is ignored; EOF means it left.
        return sock.recv(4096, getattr(socket, "MSG_DONTWAIT", 0)) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


class Streamer:
    """Streams the simulator's log to its clients; one instance serves every connection.

    ``lock`` guards ``stats`` (it is the simulator's own lock).
    """

    def __init__(
        self, config: SimulatorConfig, history: History, stopping: threading.Event,
        stats: SimulatorStats, lock: threading.Lock, on_keepalive: Callable[[], None],
    ) -> None:  # fmt: skip
        self._on_keepalive = on_keepalive
        self._config = config
        self._history = history
        self._stopping = stopping
        self._stats = stats
        self._lock = lock
        self._malformed = MalformedFrames(config.seed)

    def run(self, conn: Conn, cursor: int, allowed: frozenset[int] | None) -> None:
        """Send from ``cursor`` on, then follow the log, until stop() or the client leaves."""
        cfg = self._config
        history = self._history
        stopping = self._stopping
        if cfg.emit_retry is not None:
            conn.write(b"retry: %d\n\n" % cfg.emit_retry)
        keepalive = cfg.keepalive
        last_write = time.monotonic()
        while not stopping.is_set():
            count = history.count
            if count > cursor:
                conn.written = False
                self._send_range(conn, cursor, count, allowed)
                cursor = count
                if conn.written:
                    last_write = time.monotonic()
                continue
            timeout = _IDLE_POLL_S
            if keepalive > 0:
                remaining = last_write + keepalive - time.monotonic()
                if remaining <= 0:
                    conn.write(_KEEPALIVE_FRAME)
                    self._on_keepalive()
                    last_write = time.monotonic()
                    continue
                timeout = min(timeout, remaining)
            with history.cond:
                if history.count <= cursor and not stopping.is_set():
                    history.cond.wait(timeout)
            if peer_closed(conn.sock):
                return

    def _send_range(self, conn: Conn, lo: int, hi: int, allowed: frozenset[int] | None) -> None:
        cfg = self._config
        if allowed is None and cfg.drop_every is None and cfg.malformed_every is None:
            self._send_slices(conn, lo, hi)
        else:
            self._send_frames(conn, lo, hi, allowed)

    def _send_slices(self, conn: Conn, lo: int, hi: int) -> None:
        """Fast path: the frames are contiguous, so ship raw slices of the log."""
        history = self._history
        buf = history.buf
        stopping = self._stopping
        pos, end = history.offsets[lo], history.offsets[hi]
        while pos < end:
            if stopping.is_set():
                raise StreamClosed
            nxt = min(end, pos + _WRITE_CHUNK)
            conn.write(buf[pos:nxt])
            pos = nxt
        history.mark_streamed(lo, hi)
        conn.good += hi - lo
        with self._lock:
            self._stats.events_sent += hi - lo

    def _send_frames(self, conn: Conn, lo: int, hi: int, allowed: frozenset[int] | None) -> None:
        """Frame by frame: skip unwanted types, add malformed frames, drop when due."""
        cfg = self._config
        history = self._history
        buf = history.buf
        offsets = history.offsets
        types = history.types
        stopping = self._stopping
        drop_every = cfg.drop_every
        malformed_every = cfg.malformed_every
        parts: list[bytes | bytearray] = []
        pending: list[int] = []  # indices of the events in parts, for the ledger
        size = 0
        sent = 0
        malformed = 0
        try:
            for i in range(lo, hi):
                if allowed is not None and types[i] not in allowed:
                    continue
                frame = buf[offsets[i] : offsets[i + 1]]
                if drop_every is not None and conn.good >= drop_every:
                    self._drop(conn, parts, pending, frame)
                good = conn.good = conn.good + 1
                parts.append(frame)
                pending.append(i)
                size += len(frame)
                sent += 1
                if malformed_every is not None and good % malformed_every == 0:
                    bad = self._malformed.next(cfg.envelope)
                    parts.append(bad)
                    size += len(bad)
                    malformed += 1
                if size >= _WRITE_CHUNK:
                    if stopping.is_set():
                        raise StreamClosed
                    self._flush(conn, parts, pending)
                    size = 0
            self._flush(conn, parts, pending)
        finally:
            with self._lock:
                self._stats.events_sent += sent
                self._stats.malformed_sent += malformed

    def _flush(self, conn: Conn, parts: list[bytes | bytearray], pending: list[int]) -> None:
        """Write the queued frames, then enter their events in the delivery ledger."""
        conn.write(b"".join(parts))
        streamed = self._history.streamed
        for i in pending:
            streamed[i] = 1
        parts.clear()
        pending.clear()

    def _drop(
        self, conn: Conn, parts: list[bytes | bytearray], pending: list[int], frame: bytearray
    ) -> None:
        """Flush what is queued, then cut the connection halfway through ``frame``."""
        self._flush(conn, parts, pending)
        conn.send(torn_chunk(frame))
        with self._lock:
            self._stats.dropped += 1
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        raise StreamClosed
