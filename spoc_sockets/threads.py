"""Serve a router with plain threads: one selector loop over non-blocking sockets.

The loop thread owns every socket (each a :class:`~spoc_sockets._listen.Link`); other
threads wake it through a socketpair (the hub's ``wakeup``). Its one timer is the
``select`` timeout, at the hub's earliest deadline. See :doc:`/serving-threads`.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl as _ssl
import threading
import time
from typing import cast

from ._listen import (
    BACKLOG,
    READ,
    Link,
    accept_waiting,
    bind,
    check_listening,
    open_hub,
    watch_listeners,
)
from .router import Router

__all__ = ["Server", "serve"]


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
            self._selector.register(sock, READ)
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
            for conn in self.hub.connections + self.hub.draining:
                cast("Link", conn.transport).close(now)
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
            for conn in self.hub.connections + self.hub.draining:  # a flush cut short
                self.hub.schedule(conn)  # by an exception (Ctrl-C): flush everyone
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
                    if key.data is not None:
                        key.data.ready(events, time.monotonic())
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    else:
                        self._accept(cast("socket.socket", key.fileobj), now)
        finally:
            self._loop_thread = None

    def _accept(self, listener: socket.socket, now: float) -> None:
        for sock, peer in accept_waiting(listener, self.hub, now):
            Link.open(self.hub, sock, peer, self._ssl, self._watch_link, now)

    def _flush(self, now: float) -> None:
        self._accepting = watch_listeners(self.hub, self._listeners, self._accepting, self._watch)
        for conn in self.hub.take_pending():
            cast("Link", conn.transport).flush(now)

    def _watch(self, listener: socket.socket, accepting: bool) -> None:
        if accepting:
            self._selector.register(listener, READ)
        else:
            self._selector.unregister(listener)

    def _watch_link(self, link: Link, events: int) -> None:
        if not events:
            self._selector.unregister(link.sock)
        elif not link.events:
            self._selector.register(link.sock, events, link)
        else:
            self._selector.modify(link.sock, events, link)


#: ``with serve(router, host, port, ...) as server``
serve = Server
