"""Serve a router with plain threads: one selector loop, non-blocking sockets.

::

    from spoc_sockets.threads import serve

    with serve(router, "127.0.0.1", 8765) as server:   # server.port, server.shutdown()
        server.serve_forever()

Design: a single loop thread (the one calling :meth:`Server.serve_forever`) owns every
socket, non-blocking, watched by one :class:`selectors.DefaultSelector` (epoll, kqueue...).
Holding a thousand idle connections therefore costs a thousand sockets, not a thousand
threads. Other threads reach the loop through a socketpair: the hub's wake-up call writes
one byte to it, and the loop flushes. That is what makes :meth:`Connection.send
<spoc_sockets.Connection.send>` and :meth:`ChannelServer.broadcast
<spoc_sockets.ChannelServer.broadcast>` safe from any thread. Timers are the
``timeout`` of :meth:`selectors.BaseSelector.select`, computed from
:meth:`Hub.next_deadline <spoc_sockets.Hub.next_deadline>` on :func:`time.monotonic`.

Writes are non-blocking: what the socket does not take is kept here, per connection, the
connection is paused (the core keeps further output and applies ``max_buffered_amount``),
and resumed once the remainder is written. When the core says a transport should close,
its remainder gets ``drain_timeout`` seconds to leave before the socket is closed anyway.

With ``ssl`` (an :class:`ssl.SSLContext`), accepted sockets are wrapped and their TLS
handshake runs in the same loop; the core's ``handshake_timeout`` bounds it.

Hooks run on the loop thread and must not block it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl as _ssl
import threading
import time
from types import TracebackType

from .connection import ServerConnection
from .hub import Hub
from .router import Router

__all__ = ["Server", "serve"]

logger = logging.getLogger("spoc_sockets.server")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_READ_SIZE = 65536
_ACCEPT_BATCH = 64
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)


class _Transport:
    """One accepted socket: its connection and what the socket has not taken yet."""

    __slots__ = (
        "closed",
        "closing",
        "conn",
        "deadline",
        "handshaking",
        "mask",
        "out",
        "paused",
        "read_wants_write",
        "sent",
        "sock",
        "want",
    )

    def __init__(self, sock: socket.socket, conn: ServerConnection, tls: bool) -> None:
        self.sock = sock
        self.conn = conn
        self.out = b""  # the unsent remainder is out[sent:]
        self.sent = 0
        self.paused = False
        self.handshaking = tls  # TLS handshake not finished yet
        self.want = _READ  # what the TLS handshake waits for
        self.read_wants_write = False  # a TLS read needs the socket writable
        self.closing = False  # the core said should_close: drain, then close
        self.deadline = 0.0  # when a closing transport is closed, drained or not
        self.closed = False
        self.mask = 0  # the events registered with the selector


class Server:
    """A listening socket served by one selector loop; see :func:`serve`."""

    def __init__(
        self,
        router: Router,
        host: str,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
        shutdown_timeout: float | None = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        #: the hub of this server (its live connections: ``hub.connections``); hooks
        #: run as plain functions here, so ``async def`` hooks are refused now
        self.hub = Hub(router, self._wake)
        self.router = router
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener: socket.socket | None = socket.create_server(
            (host, port), family=family, backlog=backlog, reuse_port=reuse_port
        )
        self._listener.setblocking(False)
        #: the port listened on (useful with port 0)
        self.port: int = self._listener.getsockname()[1]
        self._ssl = ssl
        self._drain_timeout = drain_timeout
        self._shutdown_timeout = shutdown_timeout
        self._shutdown_deadline: float | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ)
        self._selector.register(self._listener, _READ)
        self._transports: dict[ServerConnection, _Transport] = {}
        self._lingering: dict[_Transport, None] = {}
        self._loop_lock = threading.Lock()
        self._loop_thread: int | None = None
        self._accept_paused = False  # out of file descriptors: wait for a close
        self._stop_requested = False
        self._interrupted = False  # the last loop ended by an exception (Ctrl-C...)
        self._stopping = False
        self._finished = False
        self._closed = False

    # -- public -----------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Run the loop in the calling thread until :meth:`shutdown` has finished."""
        with self._loop_lock:
            self._run()

    def shutdown(self) -> None:
        """Stop gracefully; from any thread, returns once :meth:`serve_forever` returned.

        The listening socket closes, new handshakes get 503, open connections are closed
        with 1001, and the loop runs until every connection is gone (each channel's
        ``close_timeout`` bounds it). Called from the loop thread (from a hook), it only
        asks, and :meth:`serve_forever` returns once done.
        """
        self._stop_requested = True
        self._wake()
        if self._loop_thread == threading.get_ident():
            return
        with self._loop_lock:  # waits for a running loop; runs it here if none ran
            self._run()

    def close(self) -> None:
        """Free every socket; connections still open are dropped (no close frame).

        A loop running in another thread is first asked to shut down gracefully, and
        waited for. Not callable from the loop thread (use :meth:`shutdown` there).
        """
        if self._loop_thread == threading.get_ident():
            raise RuntimeError("close() from the loop thread: call shutdown()")
        self._stop_requested = True
        self._wake()
        with self._loop_lock:
            if self._closed:
                return
            self._closed = self._finished = True
            now = time.monotonic()
            for transport in list(self._transports.values()):
                self._close(transport, now)
            self.hub.take_pending()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.shutdown()
        finally:
            self.close()

    # -- the loop ---------------------------------------------------------------------

    def _wake(self) -> None:
        """Make the loop flush soon; from any thread (the hub's wake-up call)."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending already), or closed
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        if self._finished:
            return
        self._loop_thread = threading.get_ident()
        try:
            if self._interrupted:  # a flush may have been cut short: flush everyone
                now = time.monotonic()
                for conn, transport in list(self._transports.items()):
                    self._flush_one(conn, transport, now)
            self._interrupted = True
            self._loop()
            self._interrupted = False
        finally:
            self._loop_thread = None

    def _loop(self) -> None:
        select = self._selector.select
        while True:
            if self._stop_requested and not self._stopping:
                self._begin_shutdown()
            now = time.monotonic()
            self.hub.handle_timeouts(now)
            for transport in [t for t in self._lingering if t.deadline <= now]:
                logger.debug("output to %s not drained in time", transport.conn.peer)
                self._close(transport, now)
            self._flush(now)
            if self._stopping and self._transports and self._past_shutdown_deadline(now):
                logger.warning("shutdown_timeout passed: dropping the remaining clients")
                for transport in list(self._transports.values()):
                    self._close(transport, now)
            if self._stopping and not self._transports:
                self._finished = True
                return
            for key, events in select(self._timeout(now)):
                now = time.monotonic()
                transport = key.data
                if transport is None:
                    if key.fileobj is self._listener:
                        self._accept(now)
                    else:
                        self._drain_wakeups()
                    continue
                assert isinstance(transport, _Transport)
                try:
                    self._handle(transport, events, now)
                except Exception:
                    logger.exception("connection from %s failed", transport.conn.peer)
                    self._close(transport, now)

    def _past_shutdown_deadline(self, now: float) -> bool:
        return self._shutdown_deadline is not None and now >= self._shutdown_deadline

    def _timeout(self, now: float) -> float | None:
        deadline = self.hub.next_deadline()
        if self._stopping and self._shutdown_deadline is not None:
            deadline = min(deadline or self._shutdown_deadline, self._shutdown_deadline)
        for transport in self._lingering:
            if deadline is None or transport.deadline < deadline:
                deadline = transport.deadline
        return None if deadline is None else max(0.0, deadline - now)

    def _begin_shutdown(self) -> None:
        self._stopping = True
        if self._shutdown_timeout is not None:
            self._shutdown_deadline = time.monotonic() + self._shutdown_timeout
        if self._listener is not None:
            if not self._accept_paused:
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self.hub.shutdown()

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, now: float) -> None:
        assert self._listener is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self._listener.accept()
            except _WOULD_BLOCK:
                return
            except OSError as exc:  # out of file descriptors, aborted by the peer...
                logger.warning("accept failed: %s", exc)
                if exc.errno in _OUT_OF_RESOURCES and self._transports:
                    self._selector.unregister(self._listener)  # until a connection closes
                    self._accept_paused = True
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
            except OSError as exc:
                logger.warning("could not set up a socket from %s: %s", address, exc)
                sock.close()
                continue
            conn = self.hub.open(now, peer=(address[0], address[1]), transport=sock)
            transport = _Transport(sock, conn, self._ssl is not None)
            self._transports[conn] = transport
            if transport.handshaking:
                self._handshake(transport, now)
            else:
                self._update(transport)

    def _handle(self, transport: _Transport, events: int, now: float) -> None:
        if transport.handshaking:
            self._handshake(transport, now)
            return
        if transport.out:
            self._send(transport, now)
        readable = events & _READ or (transport.read_wants_write and events & _WRITE)
        if readable and not transport.closed and not transport.closing:
            self._read(transport, now)

    def _handshake(self, transport: _Transport, now: float) -> None:
        sock = transport.sock
        assert isinstance(sock, _ssl.SSLSocket)
        try:
            sock.do_handshake()
        except _ssl.SSLWantReadError:
            transport.want = _READ
        except _ssl.SSLWantWriteError:
            transport.want = _WRITE
        except OSError as exc:
            logger.debug("TLS handshake with %s failed: %s", transport.conn.peer, exc)
            self._close(transport, now)
            return
        else:
            transport.handshaking = False
            if transport.out:
                self._send(transport, now)
            if not transport.closed and not transport.closing:
                self._read(transport, now)  # the request may already be there
        self._update(transport)

    def _read(self, transport: _Transport, now: float) -> None:
        sock = transport.sock
        transport.read_wants_write = False
        try:
            data = sock.recv(_READ_SIZE)
            if data and isinstance(sock, _ssl.SSLSocket):
                while sock.pending():  # decrypted bytes the selector cannot see
                    data += sock.recv(_READ_SIZE)
        except _ssl.SSLWantWriteError:
            transport.read_wants_write = True
            self._update(transport)
            return
        except _WOULD_BLOCK:
            return
        except OSError:  # reset, or a TLS error: the transport is lost
            data = b""
        transport.conn.receive_data(data, now)  # b"": the core finishes, the flush closes

    def _send(self, transport: _Transport, now: float) -> bool:
        """Write what the socket takes; False if the transport closed meanwhile."""
        sock, out = transport.sock, transport.out
        view = memoryview(out)
        try:
            while transport.sent < len(out):
                transport.sent += sock.send(view[transport.sent :])
        except _WOULD_BLOCK:
            pass
        except OSError as exc:
            logger.debug("writing to %s failed: %s", transport.conn.peer, exc)
            self._close(transport, now)
            return False
        finally:
            view.release()
        if transport.sent < len(out):
            if not transport.paused:
                transport.paused = True
                transport.conn.pause_writing()
        else:
            transport.out, transport.sent = b"", 0
            if transport.paused:  # the flush that follows writes the rest, or closes
                transport.paused = False
                transport.conn.resume_writing()
            elif transport.closing:
                self._close(transport, now)
                return False
        self._update(transport)
        return True

    def _flush(self, now: float) -> None:
        for conn in self.hub.take_pending():
            transport = self._transports.get(conn)
            try:
                self._flush_one(conn, transport, now)
            except Exception:
                logger.exception("flushing the connection from %s failed", conn.peer)
                if transport is not None:
                    self._close(transport, now)

    def _flush_one(self, conn: ServerConnection, transport: _Transport | None, now: float) -> None:
        data = conn.data_to_send(now)
        if transport is None or transport.closed:
            return
        if data:
            if transport.sent < len(transport.out):
                transport.out = transport.out[transport.sent :] + data
            else:
                transport.out = data
            transport.sent = 0
            if not transport.handshaking and not self._send(transport, now):
                return
        if conn.should_close and not transport.closing:
            transport.closing = True
            transport.deadline = now + self._drain_timeout
        if transport.closing:
            if not transport.out or transport.handshaking:
                self._close(transport, now)
            else:
                self._lingering[transport] = None
                self._update(transport)
        else:
            self._update(transport)  # reading pauses while the core holds input

    def _update(self, transport: _Transport) -> None:
        """Register the events this transport waits for now."""
        if transport.closed:
            return
        if transport.handshaking:
            mask = transport.want
        else:
            reading = not transport.closing and not transport.conn.input_paused
            mask = _READ if reading else 0
            if transport.out or transport.read_wants_write:
                mask |= _WRITE
        if mask == transport.mask:
            return
        if not mask:
            self._selector.unregister(transport.sock)
        elif not transport.mask:
            self._selector.register(transport.sock, mask, transport)
        else:
            self._selector.modify(transport.sock, mask, transport)
        transport.mask = mask

    def _close(self, transport: _Transport, now: float) -> None:
        """Close the socket; the core learns the transport is lost if it did not know."""
        if transport.closed:
            return
        transport.closed = True
        conn = transport.conn
        if not conn.should_close:
            conn.receive_data(b"", now)
        self._transports.pop(conn, None)
        self._lingering.pop(transport, None)
        if self._accept_paused and self._listener is not None:
            self._accept_paused = False
            self._selector.register(self._listener, _READ)
        if transport.mask:
            self._selector.unregister(transport.sock)
            transport.mask = 0
        transport.out = b""
        transport.sock.close()


def serve(
    router: Router,
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    backlog: int = 128,
    reuse_port: bool = False,
    shutdown_timeout: float | None = 30.0,
    drain_timeout: float = 5.0,
) -> Server:
    """A :class:`Server` listening on ``host:port`` (port 0: any free port).

    Use it as a context manager; leaving the block shuts down gracefully if the server
    still runs, then frees every socket::

        with serve(router, "127.0.0.1", 8765) as server:
            server.serve_forever()

    :param ssl: serve TLS (``wss://``) with this context; ``None`` (default) serves plain TCP.
    :param backlog: the listen backlog (default 128).
    :param reuse_port: set ``SO_REUSEPORT``, so that several processes serve one port
        (where the system has it; ``ValueError`` elsewhere).
    :param shutdown_timeout: seconds a graceful shutdown may take before the remaining
        clients are dropped (``None``: only each channel's ``close_timeout`` bounds it)
    :param drain_timeout: seconds a closing connection's unsent output gets to leave
        before the socket is closed anyway (default 5.0).
    """
    return Server(
        router,
        host,
        port,
        ssl=ssl,
        backlog=backlog,
        reuse_port=reuse_port,
        shutdown_timeout=shutdown_timeout,
        drain_timeout=drain_timeout,
    )
