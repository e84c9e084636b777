"""One interface over every way of serving a router, so behaviour tests run unchanged.

A harness serves a router (in memory, or through an adapter on 127.0.0.1) and gives:

* ``connect(path, headers=, subprotocols=)`` → a :class:`Client` (a WebSocket client:
  the in-memory one, or the ``websockets`` library over a real socket), or raises
  :class:`Rejected` with the HTTP status;
* ``raw(window=)`` → a :class:`Raw` byte pipe, for clients that misbehave on purpose;
* ``wait_for(predicate)`` → returns once ``predicate()`` holds: the in-memory harness
  moves its virtual clock, a real one polls until a deadline;
* ``held()`` → how many transports the server still holds.

A harness takes the adapter's options as keywords (:class:`Options`): ``tls``,
``shutdown_timeout``, ``drain_timeout``. Each says which it honours (``OPTIONS``); given
one it does not, it fails instead of serving without it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from spoc_sockets import Router
from spoc_sockets.testing import ConnectionClosed, HandshakeRejected, TestClient, WebSocket

from ..selfsigned import client_context, server_context

Message = str | bytes


@dataclass(frozen=True)
class TLS:
    """A certificate for 127.0.0.1 (``tests/selfsigned.py``): the server serves it, the
    client trusts it and nothing else; the server issues ``tickets`` session tickets."""

    cert: Path
    key: Path
    tickets: int = 0

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, self.tickets)

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.cert)


@dataclass(frozen=True)
class Options:
    """The adapter's options a test sets (``None``: the adapter's default)."""

    tls: TLS | None = None
    shutdown_timeout: float | None = None
    drain_timeout: float | None = None

    def given(self) -> set[str]:
        return {f.name for f in fields(self) if getattr(self, f.name) is not None}

    def keywords(self, ssl: str = "ssl") -> dict[str, Any]:
        """The options set, as the adapter's ``serve`` keywords (its TLS one is ``ssl``)."""
        given: dict[str, Any] = {name: getattr(self, name) for name in self.given() - {"tls"}}
        if self.tls is not None:
            given[ssl] = self.tls.server_context()
        return given

    def check(self, honoured: frozenset[str], harness: str) -> None:
        """Fail if an option is set that ``harness`` cannot honour."""
        unknown = self.given() - honoured
        assert not unknown, f"the {harness} harness cannot honour {sorted(unknown)}"


DEFAULTS = Options()


class Rejected(Exception):
    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class Closed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Client(Protocol):
    def send(self, message: Message) -> None: ...
    def receive(self) -> Message:
        """The next message (waiting for it on a real socket); Closed when closed."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close and wait for the server's answer."""

    def abort(self) -> None:
        """Drop the transport without a close frame."""

    @property
    def close_code(self) -> int | None: ...


class Raw(Protocol):
    """A client speaking bytes. Made with ``window=n``, it reads nothing until
    :meth:`read_all`: the server can write about ``n`` bytes to it, then its writes wait."""

    def send(self, data: bytes) -> None: ...
    def read_all(self) -> bytes:
        """Everything the server writes until it closes the transport."""

    def close(self) -> None: ...


class Served(Protocol):
    router: Router

    def connect(
        self, path: str, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> Client: ...
    def raw(self, window: int | None = None) -> Raw: ...
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None: ...
    def shutdown(self) -> None:
        """Graceful shutdown of the server (returns once it finished)."""

    def held(self) -> int:
        """How many transports the server holds (accepted, not yet closed by it); over a
        socket, read it with no ``connect()`` client open (one keeps descriptors of its own)."""


class Harness(Protocol):
    def __call__(
        self,
        router: Router,
        *,
        tls: TLS | None = None,
        shutdown_timeout: float | None = None,
        drain_timeout: float | None = None,
    ) -> AbstractContextManager[Served]: ...


# -- in memory -----------------------------------------------------------------------


class MemoryClient:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def send(self, message: Message) -> None:
        self.ws.send(message)

    def receive(self) -> Message:
        try:
            return self.ws.receive()
        except ConnectionClosed as exc:
            raise Closed(exc.code, exc.reason) from None

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.abort()

    @property
    def close_code(self) -> int | None:
        self.ws._pipe.client.pump()
        return self.ws.close_code


class MemoryRaw:
    """A transport the test speaks for; with a ``window``, one whose reader is away: it
    takes that many bytes, then pauses the server's writes (as a full socket would)."""

    def __init__(self, client: TestClient, window: int | None) -> None:
        self.client = client
        self.server = client.hub.open(client.now, peer=("127.0.0.1", 50001))
        self.output = bytearray()
        self.window = window
        self.gone = False  # the transport, closed or dropped as the core said

    def send(self, data: bytes) -> None:
        self.server.receive_data(data, self.client.now)
        self._collect()

    def _collect(self) -> None:
        if self.gone:
            return
        now = self.client.now
        data = self.server.data_to_send(now)
        if self.server.should_abort:  # dropped: what was not read is lost
            self._lose(now)
            return
        self.output += data
        if self.server.should_close and self.window is None:  # all read: closed
            self._lose(now)
        elif self.window is not None and len(self.output) >= self.window:
            self.server.pause_writing()

    def _lose(self, now: float) -> None:
        self.gone = True
        self.server.transport_lost(now)

    def read_all(self) -> bytes:
        if self.window is not None:  # the reader is back
            self.window = None
            self.server.resume_writing()
        # virtual time runs until the server closes the transport
        for _ in range(10_000):
            self._collect()
            if self.gone:
                break
            self.client.advance(0.5)
        return bytes(self.output)

    def close(self) -> None:
        self.send(b"")


class MemoryServed:
    def __init__(self, router: Router, client: TestClient) -> None:
        self.router = router
        self.client = client
        self.raws: list[MemoryRaw] = []

    def connect(
        self, path: str, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> Client:
        try:
            return MemoryClient(
                self.client.connect(path, headers=headers, subprotocols=subprotocols)
            )
        except HandshakeRejected as exc:
            raise Rejected(exc.status, exc.body) from None

    def raw(self, window: int | None = None) -> Raw:
        raw = MemoryRaw(self.client, window)
        self.raws.append(raw)
        return raw

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        waited = 0.0
        while True:
            self.client.pump()
            for raw in self.raws:  # their owner is the test: give them their turn
                raw._collect()
            if predicate():
                return
            if waited >= timeout:
                raise AssertionError(f"condition not met within {timeout}s (virtual)")
            self.client.advance(0.05)
            waited += 0.05

    def shutdown(self) -> None:
        self.client.shutdown()
        self.wait_for(lambda: self.client.hub.finished, timeout=60)

    def held(self) -> int:
        return len(self.client.hub.connections) + len(self.client.hub.draining)


@contextmanager
def memory(
    router: Router,
    *,
    tls: TLS | None = None,
    shutdown_timeout: float | None = None,
    drain_timeout: float | None = None,
) -> Iterator[Served]:
    """The in-memory harness: a :class:`TestClient` (no transport to encrypt), with the
    core's drain and shutdown deadlines in virtual time."""
    Options(tls, shutdown_timeout, drain_timeout).check(OPTIONS, "memory")
    timeouts: dict[str, Any] = {}
    if shutdown_timeout is not None:
        timeouts["shutdown_timeout"] = shutdown_timeout
    if drain_timeout is not None:
        timeouts["drain_timeout"] = drain_timeout
    with TestClient(router, **timeouts) as client:
        yield MemoryServed(router, client)


#: the adapter options the in-memory harness honours
OPTIONS: frozenset[str] = frozenset({"shutdown_timeout", "drain_timeout"})
