"""Serve a router with plain threads: one selector loop over non-blocking sockets.

The loop thread owns every socket; other threads wake it through a socketpair (the
hub's ``wakeup``). Its one timer is the ``select`` timeout, at the hub's earliest
deadline. What a socket does not take waits here, the connection paused; a TLS
handshake runs inside the first reads. See :doc:`/serving-threads`.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl as _ssl
import threading
import time
from typing import cast

from ._connection import ServerConnection
from ._listen import BACKLOG, accept_waiting, bind, check_listening, open_hub, watch_listeners
from .router import Router

__all__ = ["Server", "serve"]

logger = logging.getLogger("spoc_sockets.server")

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_READ_SIZE = 65536
_WOULD_BLOCK = (BlockingIOError, InterruptedError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)


class _Transport:
    """One accepted socket: its connection and what the socket has not taken yet."""

    __slots__ = ("closing", "conn", "mask", "out", "paused", "sock", "want")

    def __init__(self, sock: socket.socket, conn: ServerConnection) -> None:
        self.sock = sock
        self.conn = conn
        self.out = b""  # not sent yet
        self.paused = False
        self.want = _READ  # what a read waits for (_WRITE: a TLS read needs writability)
        self.closing = False  # the core said close and gave its last bytes
        self.mask = 0  # the events registered with the selector


class Server:
    """Listening sockets on ``host:port`` (port 0: any free port) served by one
    selector loop; leaving its ``with`` block shuts it down gracefully, then frees
    every socket. The options are described in :doc:`/serving-threads`."""

    def __init__(
        self,
        router: Router,
        host: str | None,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        backlog: int = BACKLOG,
        reuse_port: bool = False,
        shutdown_timeout: float | None = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        check_listening(backlog, reuse_port, ssl)
        #: the core's side (``hub.connections``); ``async def`` hooks are refused here
        self.hub = open_hub(router, self._wake, None, shutdown_timeout, drain_timeout)
        self.router = router
        self._listeners = bind(host, port, backlog, reuse_port)
        #: the port listened on (useful with port 0)
        self.port: int = self._listeners[0].getsockname()[1]
        self._ssl = ssl
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        for sock in (self._wake_r, *self._listeners):
            self._selector.register(sock, _READ)
        self._transports: dict[ServerConnection, _Transport] = {}
        self._loop_lock = threading.Lock()
        self._loop_thread: int | None = None
        self._flush_again = False  # woken on the loop thread: flush before sleeping
        self._accepting = True  # the listeners are registered
        self._stop_requested = False
        self._closed = False

    def serve_forever(self) -> None:
        """Run the loop in the calling thread until :meth:`shutdown` has finished."""
        with self._loop_lock:
            self._loop()

    def shutdown(self) -> None:
        """Stop gracefully (503, close 1001, the hub's deadlines); from any thread,
        returns once :meth:`serve_forever` returned. From the loop thread it only asks."""
        self._stop_requested = True
        self._wake()
        if self._loop_thread != threading.get_ident():
            with self._loop_lock:  # waits for a running loop; runs it here if none ran
                self._loop()

    def close(self) -> None:
        """Free every socket, after a graceful :meth:`shutdown` of a loop still running
        elsewhere; connections still open are dropped. Not from the loop thread."""
        if self._loop_thread == threading.get_ident():
            raise RuntimeError("close() from the loop thread: call shutdown()")
        self._stop_requested = True
        self._wake()
        with self._loop_lock:
            if self._closed:
                return
            self._closed = True
            now = time.monotonic()
            for transport in list(self._transports.values()):
                self._close(transport, now)
            self.hub.take_pending()
            for sock in (*self._listeners, self._wake_r, self._wake_w):
                sock.close()
            self._selector.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.shutdown()
        finally:
            self.close()

    # -- the loop ---------------------------------------------------------------------

    def _wake(self) -> None:
        """Make the loop flush soon; from any thread (the hub's wake-up call)."""
        if self._loop_thread == threading.get_ident():
            self._flush_again = True  # the loop flushes before it sleeps: no byte to send
            return
        with contextlib.suppress(OSError):  # full (a wake-up is pending already), or closed
            self._wake_w.send(b"\0")

    def _loop(self) -> None:
        if self._closed:
            return
        self._loop_thread = threading.get_ident()
        try:
            for conn in self._transports:  # a flush an exception (Ctrl-C) cut short
                self.hub.schedule(conn)
            while True:
                now = time.monotonic()
                if self._stop_requested:
                    self.hub.shutdown(now)
                self.hub.handle_timeouts(now)
                self._flush_again = False
                self._flush(now)
                if self.hub.finished:
                    return
                deadline = now if self._flush_again else self.hub.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - now)
                for key, events in self._selector.select(timeout):
                    self._ready(key.fileobj, key.data, events, time.monotonic())
        finally:
            self._loop_thread = None

    def _ready(
        self, fileobj: object, transport: _Transport | None, events: int, now: float
    ) -> None:
        if transport is None:
            if fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            else:
                self._accept(cast("socket.socket", fileobj), now)
            return
        try:
            if events & _WRITE and not self._send(transport, now):
                return
            if events & _READ or (transport.want == _WRITE and events & _WRITE):
                self._read(transport, now)
        except Exception:
            logger.exception("connection from %s failed", transport.conn.peer)
            self._close(transport, now)

    def _accept(self, listener: socket.socket, now: float) -> None:
        for sock, address in accept_waiting(listener, self.hub, now):
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
            conn = self.hub.open(now, peer=address, transport=sock)
            self._update(self._transports.setdefault(conn, _Transport(sock, conn)))

    def _read(self, transport: _Transport, now: float) -> None:
        sock = transport.sock
        transport.want = _READ
        if transport.conn.should_close:
            return
        try:  # with TLS, the first reads run the handshake
            data = sock.recv(_READ_SIZE)
            if data and isinstance(sock, _ssl.SSLSocket):
                while sock.pending():  # decrypted bytes the selector cannot see
                    data += sock.recv(_READ_SIZE)
        except _ssl.SSLWantWriteError:
            transport.want = _WRITE  # a TLS read needs the socket writable
            self._update(transport)
            return
        except _WOULD_BLOCK:
            return
        except OSError as exc:  # reset, or a TLS error: the transport is lost
            logger.debug("reading from %s failed: %s", transport.conn.peer, exc)
            data = b""
        transport.conn.receive_data(data, now)  # b"": the core finishes, the flush closes

    def _send(self, transport: _Transport, now: float) -> bool:
        """Write what the socket takes, then close once the core's last bytes left;
        False if the transport is closed now."""
        if transport.out:
            try:
                sent = transport.sock.send(transport.out)
            except _WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                logger.debug("writing to %s failed: %s", transport.conn.peer, exc)
                self._close(transport, now)
                return False
            transport.out = transport.out[sent:]
            if bool(transport.out) != transport.paused:  # resumed: the next flush writes more
                transport.paused = not transport.paused
                if transport.paused:
                    transport.conn.pause_writing()
                else:
                    transport.conn.resume_writing()
        if transport.closing and not transport.out:
            self._close(transport, now)
            return False
        self._update(transport)
        return True

    def _flush(self, now: float) -> None:
        self._accepting = watch_listeners(self.hub, self._listeners, self._accepting, self._watch)
        for conn in self.hub.take_pending():
            transport = self._transports.get(conn)
            try:
                data = conn.data_to_send(now)
                if transport is None:  # gone: the core knows
                    continue
                if conn.should_abort:
                    self._close(transport, now)
                    continue
                transport.out += data
                transport.closing = conn.should_close
                self._send(transport, now)  # and reading pauses while the core holds input
            except Exception:
                logger.exception("flushing the connection from %s failed", conn.peer)
                if transport is not None:
                    self._close(transport, now)

    def _watch(self, listener: socket.socket, accepting: bool) -> None:
        if accepting:
            self._selector.register(listener, _READ)
        else:
            self._selector.unregister(listener)

    def _update(self, transport: _Transport) -> None:
        """Register the events this (open) transport waits for now."""
        conn = transport.conn
        mask = 0 if conn.should_close or conn.input_paused else transport.want
        if transport.out:
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
        """Close the socket, and tell the core the transport is gone."""
        if self._transports.pop(transport.conn, None) is None:
            return  # closed already
        if transport.mask:
            self._selector.unregister(transport.sock)
        transport.out = b""
        transport.sock.close()
        transport.conn.transport_lost(now)


#: ``with serve(router, host, port, ...) as server``
serve = Server
