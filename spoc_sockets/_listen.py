"""What the adapters share (not part of the sans-IO core): their listening sockets and
hub, and :class:`Link`, one accepted socket served by a loop that polls sockets itself."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._connection import ServerConnection
from ._hub import Hub
from .errors import UsageError
from .limits import check_flag, check_number, shown

if TYPE_CHECKING:
    from .channel import Spawn
    from .router import Router

__all__ = [
    "BACKLOG",
    "OUT_OF_RESOURCES",
    "READ",
    "WRITE",
    "Link",
    "accept_waiting",
    "bind",
    "check_listening",
    "open_hub",
    "peer_address",
    "watch_listeners",
]

logger = logging.getLogger("spoc_sockets.server")

#: The ``accept`` errors that mean the process ran out of descriptors or memory: the
#: adapter reports them to :meth:`Hub.pause_accepting <spoc_sockets.Hub.pause_accepting>`.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: The listen queue length of every adapter by default: the kernel's traditional
#: ``SOMAXCONN`` (it caps a larger value where its own limit is lower).
BACKLOG = 128
#: Connections accepted per readiness of a non-blocking listener, at most.
ACCEPT_BATCH = 64
#: Bytes asked of a socket per read.
READ_SIZE = 65536


def _at_most_iov_max(count: int) -> int:
    """``count``, or the system's ``IOV_MAX`` (buffers per vectored write) if lower."""
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):  # no sysconf, or no such name here
        return count
    return min(count, limit) if limit > 0 else count


#: Buffers given to one ``sendmsg``, at most (512, or the system's ``IOV_MAX`` if lower).
SENDMSG_BUFFERS = _at_most_iov_max(512)

#: Whether sockets here write several buffers at once (``sendmsg``; not on Windows).
_VECTORED = hasattr(socket.socket, "sendmsg")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def check_listening(backlog: object, reuse_port: object, tls: object) -> None:
    """Refuse a wrong listening keyword of an adapter with a UsageError naming it."""
    check_number("backlog", backlog, integer=True, optional=False, minimum=1)
    check_flag("reuse_port", reuse_port)
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        raise UsageError(f"ssl is an ssl.SSLContext or None, not {shown(tls)}")


def open_hub(
    router: Router,
    wakeup: Callable[[], None],
    spawn: Spawn | None,
    shutdown_timeout: float | None,
    drain_timeout: float,
) -> Hub:
    """An adapter server's hub, the core's side of it (``spawn``: how the adapter runs
    ``async def`` hooks; ``None`` refuses them), with the two deadlines every adapter takes."""
    return Hub(
        router, wakeup, spawn, drain_timeout=drain_timeout, shutdown_timeout=shutdown_timeout
    )


def peer_address(address: object) -> tuple[str, int] | None:
    """An IP socket's peer address as ``(host, port)``; ``None`` for any other kind."""
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def accept_waiting(
    listener: socket.socket, hub: Hub, now: float
) -> list[tuple[socket.socket, tuple[str, int] | None]]:
    """The connections waiting on a non-blocking ``listener`` (at most
    :data:`ACCEPT_BATCH`); out of descriptors, the hub hears it and stops accepting."""
    accepted: list[tuple[socket.socket, tuple[str, int] | None]] = []
    while len(accepted) < ACCEPT_BATCH:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            break
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                hub.pause_accepting(now, exc)
            else:
                logger.warning("accept failed: %s", exc)
            break
        accepted.append((sock, peer_address(address)))
    return accepted


def bind(host: str | None, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it names; ``None``: every
    interface) on ``port`` (0: one free port, the same for every address)."""
    if host is None and socket.has_dualstack_ipv6():
        addresses = [(socket.AF_INET6, "::")]
    else:
        infos = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((info[0], str(info[4][0])) for info in infos))
    listeners: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.create_server(
                (address, port),
                family=family,
                backlog=backlog,
                reuse_port=reuse_port,
                dualstack_ipv6=host is None and family == socket.AF_INET6,
            )
            listeners.append(sock)
            sock.setblocking(False)
            port = port or sock.getsockname()[1]
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def watch_listeners(
    hub: Hub,
    listeners: list[socket.socket],
    watching: bool,
    watch: Callable[[socket.socket, bool], object],
) -> bool:
    """Have the adapter ``watch`` its listeners (``True``) while ``hub`` says to accept,
    and unwatch them (``False``) otherwise; once the hub refuses for good, they are
    closed and forgotten. ``watching``: whether they are watched now; returns the same,
    after."""
    if hub.accepting != watching:
        watching = hub.accepting
        for listener in listeners:  # unwatched, else the loop wakes for them in vain
            watch(listener, watching)
    if hub.refusing:
        for listener in listeners:
            listener.close()
        listeners.clear()
    return watching


class Link:
    """One accepted non-blocking socket and its connection, for an adapter whose loop
    polls sockets (a selector, asyncio's ``add_reader``): it reads and feeds the core
    (a TLS handshake runs inside the first reads), writes what the core gives (in one
    ``sendmsg`` of its buffers: a large payload is never copied), holds what the socket
    does not take (the connection paused meanwhile), and obeys the verdicts.
    ``watch(link, events)`` has the loop wait for ``events`` (:data:`READ`,
    :data:`WRITE`; 0: none) instead of ``link.events``, and call :meth:`ready`."""

    __slots__ = (
        "closing",
        "conn",
        "events",
        "lost",
        "out",
        "paused",
        "sock",
        "vectored",
        "want",
        "watch",
    )

    conn: ServerConnection

    def __init__(self, sock: socket.socket, watch: Callable[[Link, int], None]) -> None:
        self.sock = sock
        self.watch = watch
        self.out: list[bytes | memoryview] = []  # not sent yet, in order
        # writes several buffers in one sendmsg (not through TLS, nor without sendmsg)
        self.vectored = _VECTORED and not isinstance(sock, ssl.SSLSocket)
        self.paused = False
        self.want = READ  # what a read waits for (WRITE: a TLS read needs writability)
        self.closing = False  # the core said close and gave its last bytes
        self.lost = False
        self.events = 0  # what the loop waits for

    @classmethod
    def open(
        cls,
        hub: Hub,
        sock: socket.socket,
        peer: tuple[str, int] | None,
        tls: ssl.SSLContext | None,
        watch: Callable[[Link, int], None],
        now: float,
    ) -> Link | None:
        """Serve a connected TCP socket on ``hub``; ``None`` if it cannot be set up."""
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            logger.warning("could not set up a socket from %s: %s", peer, exc)
            sock.close()
            return None
        link = cls(sock, watch)
        link.conn = hub.open(now, peer=peer, transport=link)
        link.update()
        link.ready(READ, now)  # the request often comes with the connection: read it now
        return link

    def ready(self, events: int, now: float) -> None:
        """The socket is ready for ``events``: write what waits, read what came."""
        try:
            if events & WRITE and not self.send(now):
                return
            if events & READ or (self.want == WRITE and events & WRITE):
                self.read(now)
        except Exception:
            logger.exception("connection from %s failed", self.conn.peer)
            self.close(now)

    def flush(self, now: float) -> None:
        """Write what the core has (the connection was pending), and obey its verdicts."""
        try:
            if self.vectored:
                buffers = self.conn.buffers_to_send(now)
            else:
                data = self.conn.data_to_send(now)
                buffers = [data] if data else []
            if self.lost:  # gone: the core knows
                return
            if self.conn.should_abort:
                self.close(now)
                return
            self.out += buffers
            self.closing = self.conn.should_close
            self.send(now)  # and reading pauses while the core holds input
        except Exception:
            logger.exception("flushing the connection from %s failed", self.conn.peer)
            self.close(now)

    def read(self, now: float) -> None:
        sock = self.sock
        self.want = READ
        if self.conn.should_close:
            return
        try:  # with TLS, the first reads run the handshake
            data = sock.recv(READ_SIZE)
            if data and isinstance(sock, ssl.SSLSocket):
                while sock.pending():  # decrypted bytes the loop cannot see
                    data += sock.recv(READ_SIZE)
        except ssl.SSLWantWriteError:
            self.want = WRITE  # a TLS read needs the socket writable
            self.update()
            return
        except _WOULD_BLOCK:
            return
        except OSError as exc:  # reset, or a TLS error: the transport is lost
            logger.debug("reading from %s failed: %s", self.conn.peer, exc)
            data = b""
        self.conn.receive_data(data, now)  # b"": the core finishes, the flush closes

    def send(self, now: float) -> bool:
        """Write what the socket takes, then close once the core's last bytes left;
        False if the socket is closed now."""
        out = self.out
        if out:
            try:
                sent = self.sock.send(out[0]) if len(out) == 1 else self._send_buffers()
            except _WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                logger.debug("writing to %s failed: %s", self.conn.peer, exc)
                self.close(now)
                return False
            self._drop(sent)  # (and any empty buffer first)
            if bool(out) != self.paused:  # resumed: the next flush writes more
                self.paused = not self.paused
                if self.paused:
                    self.conn.pause_writing()
                else:
                    self.conn.resume_writing()
        if self.closing and not self.out:
            self.close(now)
            return False
        self.update()
        return True

    def _drop(self, sent: int) -> None:
        """Forget the first ``sent`` bytes of the output (a view keeps a buffer's rest)."""
        out = self.out
        whole = 0
        for buffer in out:
            if sent < len(buffer):
                break
            sent -= len(buffer)
            whole += 1
        del out[:whole]
        if sent:
            out[0] = memoryview(out[0])[sent:]

    def _send_buffers(self) -> int:
        """Write the first buffers in one system call; the bytes written."""
        if not self.vectored:  # one at a time
            return self.sock.send(self.out[0])
        return self.sock.sendmsg(self.out[:SENDMSG_BUFFERS])

    def update(self) -> None:
        """Have the loop wait for what this (open) socket waits for now."""
        events = 0 if self.conn.should_close or self.conn.input_paused else self.want
        if self.out:
            events |= WRITE
        if events != self.events:
            self.watch(self, events)
            self.events = events

    def close(self, now: float) -> None:
        """Close the socket, and tell the core the transport is gone."""
        if self.lost:
            return
        self.lost = True
        if self.events:
            self.watch(self, 0)
            self.events = 0
        self.out = []
        if isinstance(self.sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ValueError):  # a close_notify, if taken now
                self.sock.unwrap()  # (non-blocking: it never waits for the peer's)
        self.sock.close()
        self.conn.transport_lost(now)
