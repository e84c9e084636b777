"""TestClient: drive a :class:`~spoc_sockets.Router` in memory, with no sockets or threads.

The real core runs on one side and a real client protocol (wsproto as client) on the
other; bytes pass between them in memory, and time is a number the test moves::

    with TestClient(router) as client, client.connect("/chat?token=t") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
        client.advance(30)            # run the keepalive and the timeouts

Every call runs both sides until neither has anything left to do, so a reply caused by
a message is there by the time :meth:`WebSocket.receive` is called; a receive with
nothing to receive fails at once (:class:`NothingReceived`) instead of waiting.

``async def`` hooks run to completion within the same call, on an asyncio event loop of
the client's own (their ``asyncio.sleep`` takes real time; the protocol's clock stays the
virtual one). A hook still running after :data:`HOOK_TIMEOUT` seconds fails the call.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as WSRequest
from wsproto.extensions import PerMessageDeflate

from ._connection import ServerConnection
from ._hub import Hub
from .errors import CloseCode
from .router import Router

__all__ = ["ConnectionClosed", "HandshakeRejected", "NothingReceived", "TestClient", "WebSocket"]

#: Seconds (real time) an ``async def`` hook may run within one call of the client.
HOOK_TIMEOUT = 10.0


class HandshakeRejected(Exception):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"handshake rejected with {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body


class NothingReceived(AssertionError):
    """:meth:`WebSocket.receive` found no message waiting."""


class ConnectionClosed(Exception):
    """The connection is closed and no message is left to receive."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class _Pipe:
    """One in-memory transport: a ServerConnection, and what it wrote that the client
    has not read (while the client does not read, the server's writes are paused)."""

    def __init__(self, client: TestClient, server: ServerConnection) -> None:
        self.client = client
        self.server = server
        self.socket: WebSocket | None = None
        self.unread = bytearray()  # what the server wrote and the client did not read
        self.reading = True
        self.closing = False  # the server closes the transport after the unread bytes
        self.closed = False  # the transport is gone

    def write(self, data: bytes) -> None:
        """Bytes from the client to the server (``b""``: the client closed its side)."""
        self.server.receive_data(data, self.client.now)
        self.client.pump()

    def take(self, data: bytes) -> None:
        """The server's turn: obey its verdict, then deliver what the client reads."""
        if self.server.should_abort:
            self.unread.clear()  # dropped: what was not read is lost
            self.closing = True
        self.unread += data
        self.closing = self.closing or self.server.should_close
        if self.reading or self.server.should_abort:
            self.deliver()

    def deliver(self) -> None:
        data, self.unread = bytes(self.unread), bytearray()
        if self.closing:
            self.lose()
        assert self.socket is not None
        self.socket._feed(data, self.closing)

    def lose(self) -> None:
        """The transport is gone: the server hears it."""
        if not self.closed:
            self.closed = True
            self.client._sockets.pop(self.server, None)
            self.server.transport_lost(self.client.now)


class WebSocket:
    """The client side of one connection made by :meth:`TestClient.connect`."""

    def __init__(self, pipe: _Pipe, ws: WSConnection, answer_pings: bool) -> None:
        self._pipe = pipe
        self._ws = ws
        self._answer_pings = answer_pings
        self._messages: deque[str | bytes] = deque()
        self._parts: list[str | bytes] = []
        self._rejection: tuple[int, list[tuple[str, str]], bytearray] | None = None
        #: the negotiated subprotocol, once open
        self.subprotocol: str | None = None
        #: True once the server accepted the handshake
        self.open = False
        #: the close code and reason the server sent (1006 if it dropped the transport)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: the number of pings received from the server
        self.pings = 0

    # -- the test's side --------------------------------------------------------------

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary message, in one frame."""
        event = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        self._pipe.write(self._ws.send(event))

    def send_json(self, obj: Any) -> None:
        self.send(json.dumps(obj))

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes on the transport (for testing what a broken client sends)."""
        self._pipe.write(data)

    def receive(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`HandshakeRejected` if a handshake that was pending (a deferred or
        async ``authenticate``) has been refused since :meth:`TestClient.connect`.
        """
        self._pipe.client.pump()
        self._raise_rejection()
        if self._messages:
            return self._messages.popleft()
        if self.close_code is not None:
            raise ConnectionClosed(self.close_code, self.close_reason or "")
        raise NothingReceived("no message is waiting on this connection")

    def receive_json(self) -> Any:
        message = self.receive()
        return json.loads(message)

    def receive_all(self) -> list[str | bytes]:
        """Every message waiting (possibly none)."""
        self._pipe.client.pump()
        messages = list(self._messages)
        self._messages.clear()
        return messages

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; the server's answer sets :attr:`close_code`."""
        if self.open and self.close_code is None:
            self._pipe.write(self._ws.send(CloseConnection(code=code, reason=reason)))

    def abort(self) -> None:
        """Drop the transport without a close frame (the server sees 1006)."""
        if not self._pipe.closed:
            self._pipe.lose()
            self._pipe.client.pump()
            self.close_code = self.close_code or CloseCode.ABNORMAL_CLOSURE

    def pause_reading(self) -> None:
        """Stop reading, as a client whose receive buffer is full: the server's writes
        pause, and its output stays in the core (``max_buffered_amount`` applies)."""
        if not self._pipe.closed:
            self._pipe.reading = False
            self._pipe.server.pause_writing()

    def resume_reading(self) -> None:
        """Read again: what waited arrives, and the server's writes resume."""
        pipe = self._pipe
        if not pipe.closed and not pipe.reading:
            pipe.reading = True
            pipe.deliver()
            pipe.server.resume_writing()
            pipe.client.pump()

    @property
    def server(self) -> ServerConnection:
        """The server side of this connection (its state, its buffered output)."""
        return self._pipe.server

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        self.abort()

    # -- the client protocol ------------------------------------------------------------

    def _raise_rejection(self) -> None:
        if self._rejection is not None:
            status, headers, body = self._rejection
            raise HandshakeRejected(status, headers, bytes(body))
        if self._pipe.closed and not self.open:
            raise HandshakeRejected(0, [], b"the server closed the connection without an answer")

    def _feed(self, data: bytes, closed: bool) -> None:
        if data:
            self._ws.receive_data(data)
            for event in self._ws.events():
                self._handle(event)
        if closed:
            if self.open:
                self._ws.receive_data(None)  # reported as 1006 unless a close frame came
            for event in self._ws.events():
                self._handle(event)

    def _handle(self, event: object) -> None:
        if isinstance(event, AcceptConnection):
            self.open = True
            self.subprotocol = event.subprotocol
        elif isinstance(event, RejectConnection):
            self._rejection = (
                event.status_code,
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                bytearray(),
            )
        elif isinstance(event, RejectData):
            assert self._rejection is not None
            self._rejection[2].extend(event.data)
        elif isinstance(event, (TextMessage, BytesMessage)):
            self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
            if event.message_finished:
                first = self._parts[0]
                joined = "".join(self._parts) if isinstance(first, str) else b"".join(self._parts)  # type: ignore[arg-type]
                self._messages.append(joined)
                self._parts = []
        elif isinstance(event, Ping):
            self.pings += 1
            if self._answer_pings:
                self._pipe.server.receive_data(
                    self._ws.send(event.response()), self._pipe.client.now
                )
        elif isinstance(event, CloseConnection) and self.close_code is None:
            self.close_code, self.close_reason = int(event.code), event.reason or ""
            if self._ws.state.name == "REMOTE_CLOSING":
                self._pipe.server.receive_data(
                    self._ws.send(event.response()), self._pipe.client.now
                )


class TestClient:
    """Drives a router in memory; a context manager that closes what it opened.

    ``now`` is the starting time of the clock the test controls (see :meth:`advance`);
    ``drain_timeout`` and ``shutdown_timeout`` are the server's, as with every adapter
    (:class:`~spoc_sockets.Hub`).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        router: Router,
        *,
        now: float = 0.0,
        drain_timeout: float = 5.0,
        shutdown_timeout: float | None = 30.0,
    ) -> None:
        self.router = router
        #: the current time of this client's clock, in seconds
        self.now = now
        self.hub = Hub(
            router,
            spawn=self._spawn,
            drain_timeout=drain_timeout,
            shutdown_timeout=shutdown_timeout,
        )
        self._sockets: dict[ServerConnection, WebSocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def connect(
        self,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        subprotocols: Sequence[str] = (),
        compression: bool = False,
        answer_pings: bool = True,
        peer: tuple[str, int] = ("127.0.0.1", 50000),
    ) -> WebSocket:
        """Open a connection to ``path`` (with its query string).

        Raises :class:`HandshakeRejected` if the server refuses. A handshake whose
        ``authenticate`` deferred stays pending (``ws.open`` is False) until decided.
        """
        server = self.hub.open(self.now, peer=peer)
        pipe = _Pipe(self, server)
        ws = WSConnection(ConnectionType.CLIENT)
        socket = pipe.socket = WebSocket(pipe, ws, answer_pings)
        self._sockets[server] = socket
        request = WSRequest(
            host="testserver",
            target=path,
            extra_headers=[(k.encode(), v.encode()) for k, v in headers],
            subprotocols=list(subprotocols),
            extensions=[PerMessageDeflate()] if compression else [],
        )
        pipe.write(ws.send(request))
        socket._raise_rejection()
        return socket

    def advance(self, seconds: float) -> None:
        """Move the clock forward, running every deadline in the span in order, each at
        its own time, as real time would (a ping sent at 20 s times out at 40 s)."""
        end = self.now + seconds
        while (deadline := self.hub.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.hub.handle_timeouts(self.now)
            self.pump()
        self.now = end
        self.pump()

    def pump(self) -> None:
        """Flush every connection's output to its client, and run the async hooks,
        until nothing is left."""
        while True:
            pending = self.hub.take_pending()
            if not pending and not self._run_hooks():
                return
            for server in pending:
                socket = self._sockets.get(server)
                if socket is not None:  # else not opened by connect(): its owner reads it
                    socket._pipe.take(server.data_to_send(self.now))

    def shutdown(self) -> None:
        """Shut the server down gracefully (:meth:`Hub.shutdown
        <spoc_sockets.Hub.shutdown>`) at :attr:`now`; :meth:`advance` runs its
        deadlines, and ``client.hub.finished`` says when nothing is left."""
        self.hub.shutdown(self.now)
        self.pump()

    def _spawn(self, coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        task = self._loop.create_task(coroutine)
        self._tasks.append(task)
        return task.cancel

    def _run_hooks(self) -> bool:
        """Run the async hooks started so far to completion; False if there were none."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return False
        assert self._loop is not None
        _, late = self._loop.run_until_complete(asyncio.wait(tasks, timeout=HOOK_TIMEOUT))
        if late:
            for task in late:
                task.cancel()
            self._loop.run_until_complete(asyncio.wait(late))
            raise RuntimeError(f"an async hook was still running after {HOOK_TIMEOUT} s")
        return True

    def __enter__(self) -> TestClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for socket in list(self._sockets.values()):
            socket.abort()
        if self._loop is not None:
            self._run_hooks()  # on_close hooks of the connections just aborted
            self._loop.close()
            self._loop = None
