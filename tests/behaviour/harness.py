"""One interface over every way of serving a router, so behaviour tests run unchanged.

A harness serves a router (in memory, or through an adapter on 127.0.0.1) and gives:

* ``connect(path, headers=, subprotocols=)`` → a :class:`Client` (a WebSocket client:
  the in-memory one, or the ``websockets`` library over a real socket), or raises
  :class:`Rejected` with the HTTP status;
* ``raw()`` → a :class:`Raw` byte pipe, for clients that misbehave on purpose;
* ``wait_for(predicate)`` → returns once ``predicate()`` holds: the in-memory harness
  moves its virtual clock, a real one polls until a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from spoc_sockets import Router
from spoc_sockets.testing import ConnectionClosed, HandshakeRejected, TestClient, WebSocket

Message = str | bytes


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
    def send(self, data: bytes) -> None: ...
    def read_all(self) -> bytes:
        """Everything the server writes until it closes the transport."""

    def close(self) -> None: ...


class Served(Protocol):
    router: Router

    def connect(
        self, path: str, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> Client: ...
    def raw(self) -> Raw: ...
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None: ...
    def shutdown(self) -> None:
        """Graceful shutdown of the server (returns once it finished)."""


Harness = Callable[[Router], AbstractContextManager[Served]]


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
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.server = client.hub.open(client.now, peer=("127.0.0.1", 50001))
        self.output = bytearray()

    def send(self, data: bytes) -> None:
        self.server.receive_data(data, self.client.now)
        self._collect()

    def _collect(self) -> None:
        self.output += self.server.data_to_send(self.client.now)

    def read_all(self) -> bytes:
        # virtual time runs until the server closes the transport
        for _ in range(10_000):
            self._collect()
            if self.server.should_close:
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

    def raw(self) -> Raw:
        raw = MemoryRaw(self.client)
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
        self.client.hub.shutdown()
        self.wait_for(lambda: not self.client.hub.connections, timeout=60)


@contextmanager
def memory(router: Router) -> Iterator[Served]:
    with TestClient(router) as client:
        yield MemoryServed(router, client)
