"""The behaviour harness over a real loopback socket, shared by every adapter.

An adapter's harness module only says how to start and stop its server: a context
manager ``start(router, options)`` yielding a :class:`NetServer` (its port and a graceful
``shutdown``), and which :class:`~.harness.Options` it honours (``OPTIONS``). Clients are
the ``websockets`` library (sync client) and plain sockets.
"""

from __future__ import annotations

import inspect
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import Router

from .harness import TLS, Client, Closed, Harness, Message, Options, Raw, Rejected, Served

HOST = "127.0.0.1"
# websockets 17 warns unless a directly returned connection is asked for explicitly
LEGACY = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
TIMEOUT = 20.0
#: a TLS client socket's timeout from the start (see :class:`TimedTLSConnection`)
TLS_SOCKET_TIMEOUT = 3600.0
#: the longest a graceful shutdown may take before the harness fails it
SHUTDOWN_BOUND = 60.0


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


def open_fds() -> int:
    """The file descriptors open in this process (where the servers under test run)."""
    return len(os.listdir("/proc/self/fd"))


class SocketRaw:
    def __init__(self, port: int, window: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if window is not None:  # before connecting, so the advertised window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((HOST, port))

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


class TimedTLSConnection(ClientConnection):
    """A websockets client connection whose TLS socket has a timeout before its reading
    thread starts.

    websockets 16 (the last for Python 3.10) gives the socket its close timeout from the
    closing thread while the reading thread sits in an SSL read begun without one; when
    that read then needs more bytes, Python's ``ssl`` reports "The read operation timed
    out" at once and the client drops the server's close frame (1006 instead of 1000).
    A read begun with a timeout keeps its own deadline, so the race cannot happen.
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        sock.settimeout(TLS_SOCKET_TIMEOUT)
        super().__init__(sock, *args, **kwargs)


class NetServed:
    def __init__(self, router: Router, server: NetServer, tls: TLS | None) -> None:
        self.router = router
        self.server = server
        self._tls = tls.client_context() if tls is not None else None
        self._clients: list[ClientConnection] = []
        self._raws: list[SocketRaw] = []
        self._baseline = open_fds()  # the server's own (listener, loop): before any client

    def connect(
        self, path: str, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> Client:
        scheme = "ws" if self._tls is None else "wss"
        try:
            ws = connect(
                f"{scheme}://{HOST}:{self.server.port}{path}",
                additional_headers=list(headers),
                subprotocols=list(subprotocols) or None,  # type: ignore[arg-type]
                max_size=None,
                compression=None,
                open_timeout=TIMEOUT,
                close_timeout=TIMEOUT,
                ping_interval=None,
                ssl=self._tls,
                create_connection=TimedTLSConnection if self._tls is not None else None,
                **LEGACY,
            )
        except InvalidStatus as exc:
            raise Rejected(exc.response.status_code, exc.response.body or b"") from None
        self._clients.append(ws)
        return WebsocketsClient(ws)

    def raw(self, window: int | None = None) -> Raw:
        raw = SocketRaw(self.server.port, window)
        self._raws.append(raw)
        return raw

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        wait_for(predicate, timeout)

    def shutdown(self) -> None:
        failed: list[BaseException] = []

        def stop() -> None:
            try:
                self.server.shutdown()
            except BaseException as exc:
                failed.append(exc)

        stopper = threading.Thread(target=stop, name="harness-shutdown", daemon=True)
        stopper.start()
        stopper.join(SHUTDOWN_BOUND)
        assert not stopper.is_alive(), f"the graceful shutdown took over {SHUTDOWN_BOUND}s"
        if failed:
            raise failed[0]

    def held(self) -> int:
        # the process's descriptors, less the server's own (closed too once it stopped)
        # and the clients' sockets (a websockets client also keeps a few while open)
        ours = [ws.socket for ws in self._clients] + [raw.sock for raw in self._raws]
        return max(0, open_fds() - self._baseline - sum(sock.fileno() != -1 for sock in ours))

    def close_clients(self) -> None:
        for ws in self._clients:
            ws.close_socket()
        for raw in self._raws:
            raw.close()


class Start(Protocol):
    def __call__(self, router: Router, options: Options = ...) -> AbstractContextManager[NetServer]:
        """Serve ``router`` on 127.0.0.1 with these adapter options."""


def net_harness(start: Start, honoured: frozenset[str], name: str) -> Harness:
    """A behaviour harness from an adapter's ``start(router, options)``; ``honoured``
    names the :class:`~.harness.Options` it passes to the adapter."""

    @contextmanager
    def serve(router: Router, **given: Any) -> Iterator[Served]:
        options = Options(**given)
        options.check(honoured, name)
        with start(router, options) as server:
            served = NetServed(router, server, options.tls)
            try:
                yield served
            finally:
                served.close_clients()

    return serve
