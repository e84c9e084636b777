"""What the asyncio adapter promises beyond the behaviour suite, over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from spoc_sockets import ChannelServer, Connection, ConnectionState, Router
from spoc_sockets._listen import Link
from spoc_sockets.asyncio import Server, serve

from .frames import client_frame, close_frame_code, status_of, upgrade_request

HOST = "127.0.0.1"
T = TypeVar("T")


class Echo(ChannelServer):
    max_message_size = 8 * 2**20
    max_buffered_amount = 32 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


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


# -- graceful shutdown --------------------------------------------------------------------


def test_a_socket_adopted_during_the_shutdown_gets_503_and_none_after_it() -> None:
    """``adopt`` while a shutdown is in progress (held open by a client that does not
    answer the close frame yet): its handshake is refused with 503. Once closed, the
    server adopts nothing (it closes the socket) and ``serve_forever`` returns at once."""
    router = make_router()
    firehose = router.add("/silent", Firehose(close_timeout=30))

    async def main() -> None:
        async with serve(router, HOST, 0) as server:
            silent = await RawClient.connect(server.port)
            await silent.send(upgrade_request("/silent"))
            assert b" 101 " in await silent.read_head()
            await wait_until(lambda: len(router.upgraded) == 1)

            closing = asyncio.create_task(server.close())
            frame = await silent.loop.sock_recv(silent.sock, 64)
            assert close_frame_code(b"\r\n\r\n" + frame) == 1001
            assert not closing.done()

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
            assert firehose.closed == [1001]
            other = socket.socket()
            with pytest.raises(RuntimeError):
                await server.adopt(other)
            assert other.fileno() == -1
            await server.wait_closed()
            await server.serve_forever()  # returns at once: the server is closed

    run(main())


def test_leaving_the_block_closes_even_a_peer_that_never_answers() -> None:
    router = make_router()
    router.add("/silent", Firehose(close_timeout=0.2))

    async def main() -> Server:
        async with serve(router, HOST, 0) as server:
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


def test_send_from_another_task() -> None:
    router = make_router()
    late: list[Connection] = []

    async def main() -> None:
        async with serve(router, HOST, 0) as server:
            async with client(server.port) as ws:
                await wait_until(lambda: len(router.upgraded) == 1)
                (conn,) = router.upgraded
                late.append(conn)

                async def from_task(tag: str) -> None:
                    for i in range(500):
                        conn.send(f"{tag}{i}")
                        if i % 10 == 0:
                            await asyncio.sleep(0)

                await asyncio.gather(from_task("a"), from_task("b"))
                received = [await ws.recv() for _ in range(1000)]
                for tag in "ab":  # each task's messages arrive, in its order
                    assert [m for m in received if m[0] == tag] == [f"{tag}{i}" for i in range(500)]
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


def test_the_backlog_of_a_client_that_does_not_read_stays_in_the_core() -> None:
    """The transport's buffer stays small: what the client does not read is held (and
    bounded by ``max_buffered_amount``) in the core, until the client is closed."""
    router = make_router()
    firehose = router.add("/firehose", Firehose(close_timeout=0.2))
    chunk = b"\x07" * (64 * 1024)

    async def main() -> None:
        async with serve(router, HOST, 0, drain_timeout=0.5) as server:
            reader = await RawClient.connect(server.port, rcvbuf=4096)
            await reader.send(upgrade_request("/firehose"))
            assert b" 101 " in await reader.read_head()
            await wait_until(lambda: len(router.upgraded) == 1)
            (conn,) = router.upgraded
            (core,) = server.hub.connections
            link = cast("Link", core.transport)

            sent = most_in_transport = 0
            while conn.state is ConnectionState.OPEN:
                assert sent < 256 * 2**20, "a client that never reads was never closed"
                conn.send(chunk)
                sent += len(chunk)
                await asyncio.sleep(0)  # a flush pass
                most_in_transport = max(most_in_transport, sum(map(len, link.out)))
            assert most_in_transport <= 2**20
            await wait_until(lambda: not server.hub.connections and not server.hub.draining)
            assert link.lost
            assert firehose.closed == [1008]
            reader.close()

    run(main())


def test_a_refused_handshake_reaches_the_websockets_client() -> None:
    async def main() -> None:
        async with serve(make_router(), HOST, 0) as server:
            with pytest.raises(InvalidStatus) as refused:
                await client(server.port, "/nowhere")
            assert refused.value.response.status_code == 404

    run(main())
