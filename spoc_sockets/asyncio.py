"""Serve a :class:`~spoc_sockets.Router` on asyncio (its loop's ``add_reader``).

The loop watches each accepted socket (a :class:`~spoc_sockets._listen.Link`); after
every read, timer and wake-up the server writes what the core returns and obeys its
verdicts. One ``loop.call_at`` timer follows the hub's earliest deadline; a TLS
handshake runs inside the first reads, within the core's. See :doc:`/serving-asyncio`.
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
    READ,
    WRITE,
    Link,
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

__all__ = ["Server", "serve"]

logger = logging.getLogger("spoc_sockets.server")


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
        self._hooks: set[asyncio.Task[None]] = set()  # async hooks running
        self._port: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._finished = asyncio.Event()  # the hub has finished its shutdown
        self._closed = asyncio.Event()
        self._turn = False  # in a core call that a flush follows: no wake-up needed

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

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a connected TCP socket accepted elsewhere (with ``ssl``, its TLS
        handshake runs in the first reads). The socket is the server's now."""
        if self._closed.is_set():
            sock.close()
            raise RuntimeError("this server is closed")
        try:
            peer = peer_address(sock.getpeername())
        except OSError:
            peer = None
        self._turn = True
        Link.open(self.hub, sock, peer, self._ssl, self._watch_link, self._loop.time())
        self._flush()

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
            self._flush()  # closes the listeners
            await self._finished.wait()
        finally:
            now = self._loop.time()
            for conn in self.hub.connections + self.hub.draining:  # only when cancelled
                cast("Link", conn.transport).close(now)
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

    # -- the loop's callbacks ------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
        """Run an async hook's coroutine for the core (it reports back when done)."""
        task = self._loop.create_task(coroutine)
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)
        return task.cancel

    def _accept(self, listener: socket.socket) -> None:
        now = self._loop.time()
        self._turn = True
        for sock, peer in accept_waiting(listener, self.hub, now):
            Link.open(self.hub, sock, peer, self._ssl, self._watch_link, now)
        self._flush()  # and stop watching the listener if the hub says so

    def _ready(self, link: Link, events: int) -> None:
        self._turn = True
        link.ready(events, self._loop.time())
        self._flush()

    def _watch(self, listener: socket.socket, accepting: bool) -> None:
        if accepting:
            self._loop.add_reader(listener, self._accept, listener)
        else:
            self._loop.remove_reader(listener)

    def _watch_link(self, link: Link, events: int) -> None:
        fd = link.sock.fileno()  # not the socket: a new one's repr would be made (slow)
        if events & READ and not link.events & READ:
            self._loop.add_reader(fd, self._ready, link, READ)
        elif link.events & READ and not events & READ:
            self._loop.remove_reader(fd)
        if events & WRITE and not link.events & WRITE:
            self._loop.add_writer(fd, self._ready, link, WRITE)
        elif link.events & WRITE and not events & WRITE:
            self._loop.remove_writer(fd)

    # -- the flush rule --------------------------------------------------------------

    def _wakeup(self) -> None:
        """Called by the hub from any thread: schedule a flush on the loop."""
        # a RuntimeError means the loop is closed: every connection is gone already
        with contextlib.suppress(RuntimeError):
            if threading.get_ident() != self._thread:
                self._loop.call_soon_threadsafe(self._flush)
            elif not self._turn:
                self._loop.call_soon(self._flush)  # no need to wake the selector

    def _flush(self) -> None:
        """Write what the core has for each pending connection, and obey the verdicts."""
        self._turn = False
        now = self._loop.time()
        for conn in self.hub.take_pending():
            cast("Link", conn.transport).flush(now)
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
        self._turn = True
        # the loop may run a timer up to its clock resolution early
        self.hub.handle_timeouts(max(self._loop.time(), when))
        self._flush()


#: ``async with serve(router, host, port, ...) as server``
serve = Server
