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
:meth:`Hub.next_deadline <spoc_sockets.Hub.next_deadline>` on :func:`time.monotonic`
(the hub's drain, shutdown and accept back-off deadlines included; the loop keeps none).

Writes are non-blocking: what the socket does not take is kept here, per connection, the
connection is paused (the core keeps further output and applies ``max_buffered_amount``),
and resumed once the remainder is written. When the core says a transport should close,
the socket closes once its remainder is written, or when the core gives up on it.

With ``ssl`` (an :class:`ssl.SSLContext`), accepted sockets are wrapped and their TLS
handshake runs in the same loop; the core's ``handshake_timeout`` bounds it.

Hooks run on the loop thread and must not block it.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl as _ssl
import threading
import time
from types import TracebackType

from ._listen import OUT_OF_RESOURCES
from .connection import ServerConnection
from .hub import Hub
from .router import Router

__all__ = ["Server", "serve"]

logger = logging.getLogger("spoc_sockets.server")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_READ_SIZE = 65536
_ACCEPT_BATCH = 64
_WOULD_BLOCK = (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)


class _Transport:
    """One accepted socket: its connection and what the socket has not taken yet."""

    __slots__ = (
        "closed",
        "closing",
        "conn",
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
        self.hub = Hub(
            router, self._wake, drain_timeout=drain_timeout, shutdown_timeout=shutdown_timeout
        )
        self.router = router
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener: socket.socket | None = socket.create_server(
            (host, port), family=family, backlog=backlog, reuse_port=reuse_port
        )
        self._listener.setblocking(False)
        #: the port listened on (useful with port 0)
        self.port: int = self._listener.getsockname()[1]
        self._ssl = ssl
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _READ)
        self._selector.register(self._listener, _READ)
        self._transports: dict[ServerConnection, _Transport] = {}
        self._loop_lock = threading.Lock()
        self._loop_thread: int | None = None
        self._accepting = True  # the listener is registered
        self._stop_requested = False
        self._interrupted = False  # the last loop ended by an exception (Ctrl-C...)
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
            now = time.monotonic()
            if self._stop_requested and not self.hub.refusing:
                self.hub.shutdown(now)
            self.hub.handle_timeouts(now)
            self._flush(now)
            if self.hub.finished:
                self._finished = True
                return
            deadline = self.hub.next_deadline()
            for key, events in select(None if deadline is None else max(0.0, deadline - now)):
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
                if exc.errno not in OUT_OF_RESOURCES:
                    logger.warning("accept failed: %s", exc)
                    return
                self.hub.pause_accepting(now, exc)  # the flush unregisters the listener
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
        self._follow_accepting()
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
        if conn.should_abort:
            self._close(transport, now)
            return
        if data:
            if transport.sent < len(transport.out):
                transport.out = transport.out[transport.sent :] + data
            else:
                transport.out = data
            transport.sent = 0
            if not transport.handshaking and not self._send(transport, now):
                return
        transport.closing = conn.should_close
        if transport.closing and (not transport.out or transport.handshaking):
            self._close(transport, now)
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
        self._transports.pop(transport.conn, None)
        if transport.mask:
            self._selector.unregister(transport.sock)
            transport.mask = 0
        transport.out = b""
        transport.sock.close()
        transport.conn.transport_lost(now)

    def _follow_accepting(self) -> None:
        """Watch the listener while the hub says to accept; close it for good at shutdown."""
        if self._listener is None or self.hub.accepting == self._accepting:
            return
        self._accepting = self.hub.accepting
        if self._accepting:
            self._selector.register(self._listener, _READ)
        else:
            self._selector.unregister(self._listener)  # else select() returns at once
            if self.hub.refusing:
                self._listener.close()
                self._listener = None


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
