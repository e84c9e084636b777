"""What the asyncio adapter promises beyond the behaviour suite, over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from spoc_sockets import ChannelServer, Connection, ConnectionState, Router
from spoc_sockets.asyncio import Server, serve

from .frames import client_frame, close_frame_code, status_of, upgrade_request

HOST = "127.0.0.1"
T = TypeVar("T")


class Echo(ChannelServer):
    max_message_size = 8 * 2**20
    max_buffered_amount = 32 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class CountingEcho(Echo):
    def __init__(self) -> None:
        super().__init__()
        self.connected = 0
        self.closed: dict[int, int] = {}

    def on_connect(self, conn: Connection) -> None:
        self.connected += 1

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed[code] = self.closed.get(code, 0) + 1


class Firehose(ChannelServer):
    """A channel whose clients may not keep up; remembers how they ended."""

    max_buffered_amount = 256 * 1024
    overflow = "close"
    ping_interval = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.closed: list[int] = []

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append(code)


def make_router() -> Router:
    router = Router(handshake_timeout=5.0)
    router.add("/echo", Echo())
    return router


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test body on a fresh loop; a hang fails the test instead of blocking it."""

    async def bounded() -> T:
        task = asyncio.ensure_future(coro)
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            while not task.done():  # again, should a graceful close in it hang too
                task.cancel()
                await asyncio.wait({task}, timeout=5)
            raise AssertionError(f"the test did not finish within {timeout}s")
        return task.result()

    return asyncio.run(bounded())


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def client(port: int, path: str = "/echo", **options: Any) -> Awaitable[ClientConnection]:
    scheme = "wss" if "ssl" in options else "ws"
    return connect(  # type: ignore[return-value]
        f"{scheme}://{HOST}:{port}{path}",
        proxy=None,
        compression=None,
        ping_interval=None,
        max_size=None,
        open_timeout=20,
        close_timeout=20,
        **options,
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class RawClient:
    """A non-blocking socket spoken to by hand, through the loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def read_head(self) -> bytes:
        """Read byte by byte up to the end of the HTTP head (nothing past it)."""
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = await self.loop.sock_recv(self.sock, 1)
            assert byte, f"closed before the end of the head: {head!r}"
            head += byte
        return head

    async def read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = await self.loop.sock_recv(self.sock, 65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made offline with ``openssl req``."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_echo(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    router = make_router()

    async def main() -> None:
        async with serve(router, HOST, 0, ssl=server_context) as server:
            async with client(server.port, ssl=trusting) as ws:
                assert ws.request is not None and ws.response is not None
                for message in ["héllo", b"\x00\xff" * 10, "x" * 2**20, os.urandom(3 * 2**20)]:
                    await ws.send(message)
                    assert await ws.recv() == message
                assert len(router.upgraded) == 1
            # the certificate is really checked: a client that does not trust it fails
            with pytest.raises(ssl.SSLCertVerificationError):
                await client(server.port, ssl=ssl.create_default_context())
            await wait_until(lambda: not router.upgraded and not server.hub.connections)

    run(main())
    assert not router.upgraded


# -- churn --------------------------------------------------------------------------------


def test_churn_of_2000_connections_leaks_nothing() -> None:
    router = Router()
    echo = router.add("/echo", CountingEcho())

    async def one(port: int, i: int) -> None:
        ws = await client(port)
        if i % 50 == 0:
            await ws.send(f"ping {i}")
            assert await ws.recv() == f"ping {i}"
        if i % 2:  # abrupt: no close frame, the TCP connection just ends (FIN or RST)
            if i % 4 == 1:
                sock = ws.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ws.transport.abort()
            await ws.wait_closed()
        else:
            await ws.close()

    async def main() -> None:
        async with serve(router, HOST, 0) as server:
            await one(server.port, 0)  # warm up (the loop's and the server's own fds)
            await wait_until(lambda: not server.hub.connections)
            before = open_fds()
            batch = 25
            for start in range(0, 2000, batch):
                await asyncio.gather(*(one(server.port, i) for i in range(start, start + batch)))
            await wait_until(lambda: not router.upgraded and not server.hub.connections)
            await wait_until(lambda: open_fds() <= before)
            assert not router.upgraded
            assert echo.connected == 2001
            assert echo.closed == {1000: 1001, 1006: 1000}

    run(main())


# -- graceful shutdown --------------------------------------------------------------------


def test_graceful_shutdown_sends_1001_and_refuses_new_handshakes_with_503() -> None:
    router = make_router()
    firehose = router.add("/silent", Firehose(close_timeout=30))

    async def main() -> None:
        async with serve(router, HOST, 0) as server:
            clients = [await client(server.port) for _ in range(5)]
            # a client that will not answer the close frame until told: shutdown waits for it
            silent = await RawClient.connect(server.port)
            await silent.send(upgrade_request("/silent"))
            assert b" 101 " in await silent.read_head()
            await wait_until(lambda: len(router.upgraded) == 6)

            closing = asyncio.create_task(server.close())
            for ws in clients:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1001
            frame = await silent.loop.sock_recv(silent.sock, 64)
            assert close_frame_code(b"\r\n\r\n" + frame) == 1001
            assert not closing.done()

            # the server is shutting down: a handshake it is handed now gets 503
            listener = socket.create_server((HOST, 0))
            latecomer = await RawClient.connect(listener.getsockname()[1])
            accepted, _ = listener.accept()
            listener.close()
            await server.adopt(accepted)
            await latecomer.send(upgrade_request("/echo"))
            assert status_of(await latecomer.read_all()) == 503
            latecomer.close()

            await silent.send(client_frame(0x8, struct.pack("!H", 1001)))
            await closing
            assert await silent.read_all() == b""
            silent.close()
            assert not server.hub.connections
            assert not router.upgraded
            assert firehose.closed == [1001]
            # closed: no more listening, no more adopting
            with pytest.raises(OSError):
                await client(server.port)
            other = socket.socket()
            with pytest.raises(RuntimeError):
                await server.adopt(other)
            assert other.fileno() == -1
            await server.wait_closed()
            await server.serve_forever()  # returns at once: the server is closed

    run(main())


@pytest.mark.parametrize(
    ("close_timeout", "shutdown_timeout"), [(0.2, 30.0), (30.0, 0.2)], ids=["close", "shutdown"]
)
def test_leaving_the_block_closes_even_a_peer_that_never_answers(
    close_timeout: float, shutdown_timeout: float
) -> None:
    router = make_router()
    router.add("/silent", Firehose(close_timeout=close_timeout))

    async def main() -> Server:
        async with serve(router, HOST, 0, shutdown_timeout=shutdown_timeout) as server:
            silent = await RawClient.connect(server.port)
            await silent.send(upgrade_request("/silent"))
            await silent.read_head()
            await wait_until(lambda: len(router.upgraded) == 1)
        assert not router.upgraded and not server.hub.connections
        assert close_frame_code(b"\r\n\r\n" + await silent.read_all()) == 1001
        silent.close()
        return server

    server = run(main())
    run(server.wait_closed(), timeout=10)  # a closed server stays closed, on any loop


# -- sends from elsewhere ----------------------------------------------------------------


def test_send_from_another_thread_and_from_another_task() -> None:
    router = make_router()
    late: list[Connection] = []

    async def main() -> None:
        async with serve(router, HOST, 0) as server:
            async with client(server.port) as ws:
                await wait_until(lambda: len(router.upgraded) == 1)
                (conn,) = router.upgraded
                late.append(conn)

                def from_thread() -> None:
                    for i in range(500):
                        conn.send(f"t{i}")

                async def from_task() -> None:
                    for i in range(500):
                        conn.send(f"a{i}")
                        if i % 10 == 0:
                            await asyncio.sleep(0)

                thread = threading.Thread(target=from_thread)
                thread.start()
                await from_task()
                received = [await ws.recv() for _ in range(1000)]
                thread.join(20)  # the loop waits here: run() could not bound it
                assert not thread.is_alive(), "sends from a thread did not return"
                assert [m for m in received if m[0] == "t"] == [f"t{i}" for i in range(500)]
                assert [m for m in received if m[0] == "a"] == [f"a{i}" for i in range(500)]
            await wait_until(lambda: not router.upgraded)

    run(main())
    late[0].send("after the loop is gone")  # discarded, and no error in the sender


# -- adopting sockets ---------------------------------------------------------------------


def test_adopt_a_socket_from_our_own_listener(caplog: pytest.LogCaptureFixture) -> None:
    router = make_router()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.create_server((HOST, 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        async with serve(router, None, None) as server:  # no listener of its own
            with pytest.raises(RuntimeError):
                _ = server.port
            for i in range(3):
                connecting = asyncio.ensure_future(client(port))
                sock, _ = await loop.sock_accept(listener)
                await server.adopt(sock)
                async with await connecting as ws:
                    await ws.send(f"adopted {i}")
                    assert await ws.recv() == f"adopted {i}"
                    assert len(router.upgraded) == 1
                await wait_until(lambda: not router.upgraded)
        listener.close()

    with caplog.at_level(logging.INFO, logger="spoc_sockets"):
        run(main())
    opened = [r.message for r in caplog.records if r.name == "spoc_sockets.connections"]
    assert sum(m.startswith("open /echo peer=127.0.0.1:") for m in opened) == 3


def test_listening_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        async with serve(make_router(), HOST, 0) as server:
            return server.port

    with caplog.at_level(logging.INFO, logger="spoc_sockets"):
        port = run(main())
    assert f"serving on ws://127.0.0.1:{port}" in caplog.messages


# -- flow control -------------------------------------------------------------------------


@pytest.mark.parametrize("reads_later", [True, False])
def test_a_client_that_does_not_read_is_closed_with_1008(reads_later: bool) -> None:
    router = make_router()
    limit = Firehose.max_buffered_amount
    firehose = router.add("/firehose", Firehose(close_timeout=20 if reads_later else 0.2))
    chunk = b"\x07" * (64 * 1024)

    async def main() -> None:
        async with serve(router, HOST, 0, drain_timeout=0.5) as server:
            reader = await RawClient.connect(server.port, rcvbuf=4096)
            await reader.send(upgrade_request("/firehose"))
            assert b" 101 " in await reader.read_head()
            await wait_until(lambda: len(router.upgraded) == 1)
            (conn,) = router.upgraded
            (core,) = server.hub.connections
            transport = cast("asyncio.Transport", core.transport.transport)  # type: ignore[union-attr]

            sent = most_buffered = most_in_transport = 0
            while conn.state is ConnectionState.OPEN:
                assert sent < 256 * 2**20, "a client that never reads was never closed"
                conn.send(chunk)
                sent += len(chunk)
                await asyncio.sleep(0)  # a flush pass
                most_buffered = max(most_buffered, conn.buffered_amount)
                most_in_transport = max(most_in_transport, transport.get_write_buffer_size())
            assert most_buffered <= limit
            assert most_in_transport <= 2**20  # the backlog stayed in the core, bounded
            assert sent > limit

            if reads_later:
                received = b""
                while close_frame_code(b"\r\n\r\n" + received) is None:
                    data = await reader.loop.sock_recv(reader.sock, 2**20)
                    assert data, "closed without a close frame"
                    received += data
                assert close_frame_code(b"\r\n\r\n" + received) == 1008
                await reader.send(client_frame(0x8, struct.pack("!H", 1008)))
            # else: the peer never reads; close_timeout, then drain_timeout drops the transport
            await wait_until(lambda: not server.hub.connections and not server._protocols)
            assert transport.is_closing()
            assert firehose.closed == [1008]
            assert not router.upgraded
            reader.close()

    run(main())


def test_a_refused_handshake_reaches_the_websockets_client() -> None:
    async def main() -> None:
        async with serve(make_router(), HOST, 0) as server:
            with pytest.raises(InvalidStatus) as refused:
                await client(server.port, "/nowhere")
            assert refused.value.response.status_code == 404

    run(main())
