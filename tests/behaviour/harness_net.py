"""The behaviour harness over a real loopback socket, shared by every adapter.

An adapter's harness module only says how to start and stop its server: a context
manager ``start(router)`` yielding a :class:`NetServer` (its port and a graceful
``shutdown``). Clients are the ``websockets`` library (sync client) and plain sockets.
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import Router

from .harness import Client, Closed, Message, Raw, Rejected, Served

HOST = "127.0.0.1"
# websockets 17 warns unless a directly returned connection is asked for explicitly
LEGACY = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
TIMEOUT = 20.0


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Return once ``predicate()`` holds; fail after ``timeout`` seconds of real time."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        pause.wait(0.01)


@dataclass
class NetServer:
    port: int
    shutdown: Callable[[], None]


class WebsocketsClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def send(self, message: Message) -> None:
        self.ws.send(message)

    def receive(self) -> Message:
        try:
            return self.ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            raise Closed(code, exc.rcvd.reason if exc.rcvd else "") from None

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.socket.shutdown(socket.SHUT_RDWR)
        self.ws.close_socket()

    @property
    def close_code(self) -> int | None:
        rcvd = self.ws.protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
        return 1006 if self.ws.protocol.state.name == "CLOSED" else None


class SocketRaw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        self.sock.close()
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


class NetServed:
    def __init__(self, router: Router, server: NetServer) -> None:
        self.router = router
        self.server = server
        self._clients: list[ClientConnection] = []

    def connect(
        self, path: str, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> Client:
        try:
            ws = connect(
                f"ws://{HOST}:{self.server.port}{path}",
                additional_headers=list(headers),
                subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
                max_size=None,
                compression=None,
                open_timeout=TIMEOUT,
                close_timeout=TIMEOUT,
                ping_interval=None,
                **LEGACY,
            )
        except InvalidStatus as exc:
            raise Rejected(exc.response.status_code, exc.response.body or b"") from None
        self._clients.append(ws)
        return WebsocketsClient(ws)

    def raw(self) -> Raw:
        return SocketRaw(self.server.port)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        wait_for(predicate, timeout)

    def shutdown(self) -> None:
        self.server.shutdown()

    def close_clients(self) -> None:
        for ws in self._clients:
            ws.close_socket()


def net_harness(
    start: Callable[[Router], AbstractContextManager[NetServer]],
) -> Callable[[Router], AbstractContextManager[Served]]:
    """A behaviour harness from an adapter's ``start(router)``."""

    @contextmanager
    def serve(router: Router) -> Iterator[Served]:
        with start(router) as server:
            served = NetServed(router, server)
            try:
                yield served
            finally:
                served.close_clients()

    return serve
