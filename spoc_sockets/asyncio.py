"""Serve a :class:`~spoc_sockets.Router` on asyncio (protocols and transports).

Each transport's :class:`asyncio.BufferedProtocol` feeds its connection (every transport
reads into the server's one buffer); after every feed, timer and wake-up the server
writes what the core returns and obeys its verdicts. One ``loop.call_at`` timer follows
the hub's earliest deadline. See :doc:`/serving-asyncio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, cast

from ._listen import (
    BACKLOG,
    accept_waiting,
    bind,
    check_listening,
    open_hub,
    peer_address,
    watch_listeners,
)
from .router import Router

if TYPE_CHECKING:
    from ssl import SSLContext

    from ._connection import ServerConnection

__all__ = ["Server", "serve"]

logger = logging.getLogger("spoc_sockets.server")

#: Bytes a transport reads at most per ``recv``, into the server's buffer.
READ_SIZE = 262144


class _Protocol(asyncio.BufferedProtocol):
    """One transport: bytes in to its connection, end of stream as ``b""``."""

    conn: ServerConnection  # from connection_made on (asyncio calls it first)

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        server = self.server
        peer = peer_address(transport.get_extra_info("peername"))
        self.conn = server.hub.open(server._loop.time(), peer=peer, transport=self)
        server._flush()  # the new handshake deadline may be the earliest: rearm

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server._buffer  # read into, then consumed before the next read

    def buffer_updated(self, nbytes: int, eof: bool = False) -> None:
        server = self.server
        server._turn = True  # the flush that follows writes what the core has
        try:
            data = b"" if eof else server._buffer[:nbytes].tobytes()
            self.conn.receive_data(data, server._loop.time())
        finally:
            server._flush()

    def eof_received(self) -> None:
        self.buffer_updated(0, eof=True)  # the transport closes itself after its last bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.conn.transport_lost(self.server._loop.time())
        self.server._flush()

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()  # makes the connection pending: the hub wakes us

    def obey(self, conn: ServerConnection, data: bytes) -> None:
        """Write ``data``, then do what the core says: drop, close, or pause reading."""
        transport = self.transport
        if transport is None:  # gone: the core knows
            return
        if conn.should_abort:
            transport.abort()
            return
        if data and not transport.is_closing():
            transport.write(data)
        if conn.should_close:
            transport.close()  # after the last bytes; the hub bounds the drain
        elif conn.input_paused:
            transport.pause_reading()  # both are no-ops when already done
        else:
            transport.resume_reading()


class Server:
    """Serve ``router`` on ``host:port`` (``0``: a free port; ``None``: no listener, for
    :meth:`adopt`) within ``async with serve(...)``, then close gracefully; every method
    runs on the server's loop. The options are described in :doc:`/serving-asyncio`."""

    def __init__(
        self,
        router: Router,
        host: str | None,
        port: int | None,
        *,
        ssl: SSLContext | None = None,
        backlog: int = BACKLOG,
        reuse_port: bool = False,
        shutdown_timeout: float | None = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        check_listening(backlog, reuse_port, ssl)
        self.router = router
        self._address = (host, port, backlog, reuse_port)
        #: the core's side of this server (its drain and shutdown deadlines too)
        self.hub = open_hub(router, self._wakeup, self._spawn, shutdown_timeout, drain_timeout)
        self._ssl = ssl
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._listeners: list[socket.socket] = []
        self._accepting = False
        self._adopting: set[asyncio.Task[None]] = set()
        self._hooks: set[asyncio.Task[None]] = set()  # async hooks running
        self._port: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finished = asyncio.Event()  # the hub has finished its shutdown
        self._closed = asyncio.Event()
        self._turn = False  # in a core call that a flush follows: no wake-up needed
        self._buffer = memoryview(bytearray(READ_SIZE))  # every transport reads here

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system when ``port=0``)."""
        if self._port is None:
            raise RuntimeError("this server has no listener (it was started with port=None)")
        return self._port

    async def __aenter__(self) -> Server:
        host, port, backlog, reuse_port = self._address
        if port is not None:
            self._listeners = bind(host, port, backlog, reuse_port)
            names = [s.getsockname() for s in self._listeners]
            self._port = int(names[0][1])
            self._flush()  # watches the listeners
            scheme = "wss" if self._ssl is not None else "ws"
            logger.info("serving on %s", ", ".join(f"{scheme}://{n[0]}:{n[1]}" for n in names))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _spawn(self, coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
        """Run an async hook's coroutine for the core (it reports back when done)."""
        task = self._loop.create_task(coroutine)
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)
        return task.cancel

    def _accept(self, listener: socket.socket) -> None:
        for sock, _ in accept_waiting(listener, self.hub, self._loop.time()):
            task = self._loop.create_task(self._adopt_accepted(sock))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)
        self._flush()  # stop watching the listener if the hub says so

    async def _adopt_accepted(self, sock: socket.socket) -> None:
        try:
            await self.adopt(sock)
        except Exception as exc:  # a failed TLS handshake, a reset...
            logger.debug("could not set up a connection: %r", exc)
            sock.close()
        except BaseException:  # cancelled by close(): the socket is ours to close
            sock.close()
            raise

    def _watch(self, listener: socket.socket, accepting: bool) -> None:
        if accepting:
            self._loop.add_reader(listener, self._accept, listener)
        else:
            self._loop.remove_reader(listener)

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a connected TCP socket accepted elsewhere (with ``ssl``, once its TLS
        handshake is done; this raises if it fails). The socket is the server's now."""
        if self._closed.is_set():
            sock.close()
            raise RuntimeError("this server is closed")
        # the TLS handshake is part of the opening handshake: the same bound applies
        timeout = None if self._ssl is None else self.router.handshake_timeout
        await self._loop.connect_accepted_socket(
            lambda: _Protocol(self), sock, ssl=self._ssl, ssl_handshake_timeout=timeout
        )

    async def close(self) -> None:
        """Graceful shutdown (:meth:`Hub.shutdown <spoc_sockets.Hub.shutdown>`);
        returns once the hub has finished. Cancelled, it drops the remaining transports at
        once. A second call waits for the first."""
        if self.hub.refusing:
            await self._closed.wait()
            return
        try:
            logger.info("shutting down (%d connections)", len(self.hub.connections))
            self.hub.shutdown(self._loop.time())
            for task in self._adopting:
                task.cancel()
            self._flush()  # closes the listeners
            await self._finished.wait()
        finally:
            try:
                for conn in self.hub.connections + self.hub.draining:  # only when cancelled
                    conn.abort()
                self._flush()
                while self.hub.connections or self.hub.draining:  # connection_lost follows
                    await asyncio.sleep(0)
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                for task in list(self._hooks):  # the hub gave up on them
                    task.cancel()
                self._closed.set()
                logger.info("server closed")

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished (``serve_forever`` is the same: the
        connections are served from the start)."""
        await self._closed.wait()

    serve_forever = wait_closed

    # -- the flush rule --------------------------------------------------------------

    def _wakeup(self) -> None:
        """Called by the hub from any thread: schedule a flush on the loop."""
        # a RuntimeError means the loop is closed: every connection is gone already
        with contextlib.suppress(RuntimeError):
            if threading.get_ident() == self._thread:
                if not self._turn:
                    self._loop.call_soon(self._flush)  # no need to wake the selector
            else:
                self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        """Write what the core has for each pending connection, and obey the verdicts."""
        self._turn = False
        now = self._loop.time()
        for conn in self.hub.take_pending():
            cast("_Protocol", conn.transport).obey(conn, conn.data_to_send(now))
        self._rearm()
        self._accepting = watch_listeners(self.hub, self._listeners, self._accepting, self._watch)
        if self.hub.finished:
            self._finished.set()

    def _rearm(self) -> None:
        """One timer, at the hub's earliest deadline (deadlines change only in core calls)."""
        deadline = self.hub.next_deadline()
        if self._timer is not None and self._timer.when() != deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self._timer is not None
        when = self._timer.when()
        self._timer = None
        # the loop may run a timer up to its clock resolution early
        self.hub.handle_timeouts(max(self._loop.time(), when))
        self._flush()


#: ``async with serve(router, host, port, ...) as server``
serve = Server
