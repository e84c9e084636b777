"""Serve a :class:`~spoc_sockets.Router` with trio (the optional extra ``trio``).

Per stream, a reader task feeds the core (waiting while it holds input) and a writer
task writes what it returns, one ``send_all`` at a time; a verdict to abort cancels
both. One timer task follows the hub's earliest deadline; woken by a task on the trio
thread (an async hook that sent), it flushes at once. See :doc:`/serving-trio`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Coroutine
from ssl import SSLContext

import trio

from ._connection import ServerConnection
from ._listen import BACKLOG, OUT_OF_RESOURCES, bind, check_listening, open_hub, peer_address
from .router import Router

__all__ = ["Server", "handle_stream", "serve"]

#: Bytes asked of the transport per read.
READ_SIZE = 65536


class _Link:
    """The adapter's side of one stream: output in flight and the writer's wake-up."""

    __slots__ = ("closing", "conn", "event", "heard", "out", "readable", "scope", "stream")

    def __init__(self, stream: trio.abc.Stream, conn: ServerConnection) -> None:
        self.stream = stream
        self.conn = conn
        self.out: list[bytes] = []  # given to the writer; the core holds the rest meanwhile
        self.closing = False  # the core said close: write the rest, then close
        self.heard = False  # bytes came in: with TLS, its handshake is done
        self.event = trio.Event()  # set when there is output or a verdict for the writer
        self.readable = trio.Event()  # set when the core wants input again
        self.scope = trio.CancelScope()  # cancelled when the core gives up on the stream


class Server:
    """One hub served by trio (made by :func:`serve` and :func:`handle_stream`)."""

    def __init__(
        self,
        router: Router,
        *,
        shutdown_timeout: float | None = 30.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self.router = router
        #: the core's side of this server (its drain and shutdown deadlines too)
        self.hub = open_hub(router, self._wakeup, self._spawn, shutdown_timeout, drain_timeout)
        #: the listeners (empty for :func:`handle_stream`)
        self.listeners: list[trio.SocketListener] = []
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        self._turn = False  # in a core call that a flush follows: no wake-up needed
        self._links: dict[ServerConnection, _Link] = {}
        self._timer = trio.CancelScope()  # the one timer: its deadline is the hub's next
        self._hooks: trio.Nursery | None = None  # where async hooks run
        self._accept_again = trio.Event()  # set while the hub says to accept
        self._idle = trio.Event()  # set once the hub has finished
        self._done = trio.Event()

    @property
    def port(self) -> int:
        """The port of the first listener (the one chosen when ``port=0``)."""
        return int(self.listeners[0].socket.getsockname()[1])

    async def aclose(self) -> None:
        """Graceful shutdown without cancelling :func:`serve`; returns once done."""
        self._begin_shutdown()
        await self._done.wait()

    # -- the core's flush rule --------------------------------------------------------

    def _wakeup(self) -> None:  # any thread
        if threading.get_ident() != self._thread:
            with contextlib.suppress(trio.RunFinishedError):  # gone: nothing left to flush
                self._token.run_sync_soon(self._flush)
        elif not self._turn:
            self._timer.cancel()  # the timer task flushes, with no trip through the kernel

    def _spawn(self, coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
        """Run an async hook's coroutine for the core (it reports back when done)."""
        assert self._hooks is not None, "a connection exists only while the server runs"
        scope = trio.CancelScope()
        self._hooks.start_soon(_await, coroutine, scope)
        return scope.cancel

    def _flush(self) -> None:  # the trio thread
        self._turn = False
        now = trio.current_time()
        for conn in self.hub.take_pending():
            buffers = conn.buffers_to_send(now)  # none while a write is in flight
            link = self._links.get(conn)
            if link is None:  # its stream is gone: late sends are discarded by the core
                continue
            if conn.should_abort:
                link.scope.cancel()
                continue
            if not conn.input_paused:
                link.readable.set()
            if buffers:
                link.out += buffers  # none before: the core pauses while a write is in flight
                conn.pause_writing()
            link.closing = conn.should_close
            link.event.set()
        if self.hub.accepting:
            self._accept_again.set()
        if self.hub.finished:
            self._idle.set()
        deadline = self.hub.next_deadline()
        deadline = math.inf if deadline is None else deadline
        if deadline != self._timer.deadline:  # setting it costs, even to the same value
            self._timer.deadline = deadline

    async def _tick(self) -> None:
        while True:
            with self._timer:
                await trio.sleep_forever()
            self._timer = trio.CancelScope()
            self.hub.handle_timeouts(trio.current_time())
            self._flush()

    # -- one stream ---------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one stream on this server's hub until the core closes it."""
        conn = self.hub.open(trio.current_time(), peer=_peer(stream), transport=stream)
        link = self._links[conn] = _Link(stream, conn)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, link)
                    await self._write(link)
                    nursery.cancel_scope.cancel()
                if link.heard:  # after the last bytes, a TLS close_notify (never waited for)
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.aclose()
        finally:
            del self._links[conn]
            await trio.aclose_forcefully(stream)  # nothing left to do if closed already
            conn.transport_lost(trio.current_time())
            self._flush()

    async def _read(self, link: _Link) -> None:
        conn = link.conn
        while not conn.should_close:
            try:
                data = await link.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self._turn = True
            link.heard = link.heard or bool(data)
            conn.receive_data(bytes(data), trio.current_time())
            self._flush()
            if not data:
                return
            while conn.input_paused and not conn.should_close:  # until its next turn
                link.readable = trio.Event()
                await link.readable.wait()

    async def _write(self, link: _Link) -> None:
        conn = link.conn
        while True:
            if link.out:
                buffers, link.out = link.out, []
                try:
                    for data in buffers:  # a large payload as it is: never copied
                        await link.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # transport lost: handle_stream tells the core
                self._turn = True
                conn.resume_writing()  # makes the connection pending: flush what waited
                self._flush()
                continue
            if link.closing:
                return
            link.event = trio.Event()
            await link.event.wait()

    async def _accept(
        self, listener: trio.SocketListener, tls: SSLContext | None, nursery: trio.Nursery
    ) -> None:
        """Accept streams (wrapped in TLS with ``tls``) while the hub says to accept."""
        while True:
            try:
                stream: trio.abc.Stream = await listener.accept()
            except trio.ClosedResourceError:
                return  # closed by the shutdown
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                if self._accept_again.is_set():
                    self._accept_again = trio.Event()
                self.hub.pause_accepting(trio.current_time(), exc)
                self._flush()
                await self._accept_again.wait()
                continue
            if tls is not None:  # its handshake runs in the first reads, within handshake_timeout
                stream = trio.SSLStream(stream, tls, server_side=True)
            nursery.start_soon(self.handle_stream, stream)

    # -- shutdown -------------------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if not self.hub.refusing:
            for listener in self.listeners:
                listener.socket.close()  # wakes its accept with ClosedResourceError
            self.hub.shutdown(trio.current_time())
            self._flush()

    async def _run(self, start: Callable[[trio.Nursery], object]) -> None:
        """Run the timer and what ``start`` starts until the hub has finished its shutdown
        (an outer cancellation begins it)."""
        try:
            async with trio.open_nursery() as watch:
                watch.start_soon(self._watch_cancellation)
                with trio.CancelScope(shield=True):
                    async with trio.open_nursery() as nursery:
                        self._hooks = nursery
                        nursery.start_soon(self._tick)
                        start(nursery)
                        await self._idle.wait()  # no stream, no hook left: the hub finished
                        nursery.cancel_scope.cancel()  # the timer (and accepts paused)
                watch.cancel_scope.cancel()
        finally:
            self._done.set()

    async def _watch_cancellation(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._begin_shutdown()


async def _await(coroutine: Coroutine[object, None, None], scope: trio.CancelScope) -> None:
    with scope:
        await coroutine


def _peer(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The remote address under ``stream`` (through SSLStream layers), if it has one."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    with contextlib.suppress(OSError):
        if isinstance(stream, trio.SocketStream):
            return peer_address(stream.socket.getpeername())
    return None


async def serve(
    router: Router,
    host: str | None,
    port: int,
    *,
    ssl: SSLContext | None = None,
    backlog: int = BACKLOG,
    reuse_port: bool = False,
    shutdown_timeout: float | None = 30.0,
    drain_timeout: float = 5.0,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and serve ``router`` until cancelled (a graceful shutdown,
    then the cancellation propagates) or until ``await server.aclose()``. With
    ``nursery.start`` it reports the :class:`Server` (``port``, ``hub``, ``listeners``).
    The options are described in :doc:`/serving-trio`."""
    check_listening(backlog, reuse_port, ssl)
    server = Server(router, shutdown_timeout=shutdown_timeout, drain_timeout=drain_timeout)
    server.listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        for sock in bind(host, port, backlog, reuse_port)
    ]

    def accept(nursery: trio.Nursery) -> None:
        for listener in server.listeners:
            nursery.start_soon(server._accept, listener, ssl, nursery)
        task_status.started(server)

    try:
        await server._run(accept)
    finally:
        for listener in server.listeners:  # closed already, unless cancelled early
            await trio.aclose_forcefully(listener)


async def handle_stream(
    router: Router,
    stream: trio.abc.Stream,
    *,
    shutdown_timeout: float | None = 30.0,
    drain_timeout: float = 5.0,
) -> None:
    """Serve one :class:`trio.abc.Stream` accepted by your own listener, with a hub of
    its own; returns once it is closed. Cancelled, it closes its client with 1001."""
    server = Server(router, shutdown_timeout=shutdown_timeout, drain_timeout=drain_timeout)

    async def one() -> None:
        await server.handle_stream(stream)
        server._begin_shutdown()  # the stream is closed: nothing left to serve

    await server._run(lambda nursery: nursery.start_soon(one))
