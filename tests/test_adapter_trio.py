"""What the trio adapter promises beyond the behaviour suite, over real loopback sockets:
cancellation as a graceful shutdown, ``aclose``, ``handle_stream`` behind your own
listener, a server in your own nursery."""

from __future__ import annotations

import socket
import ssl
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import spoc_sockets.trio
from spoc_sockets import ChannelServer, Connection, Router
from spoc_sockets.trio import handle_stream

from .behaviour.harness_net import HOST, LEGACY, TIMEOUT, wait_for
from .behaviour.harness_trio import TrioThread, serving
from .frames import close_frame_code, status_of, upgrade_request
from .selfsigned import client_context, make_certificate, server_context


class Echo(ChannelServer):
    max_message_size = 4 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class Stubborn(ChannelServer):
    """For clients that never answer a close frame."""

    close_timeout = 0.3


def make_router() -> Router:
    router = Router(handshake_timeout=2.0)
    router.add("/echo", Echo())
    router.add("/stubborn", Stubborn())
    return router


def client(url: str, context: ssl.SSLContext | None = None) -> ClientConnection:
    return connect(
        url,
        ssl=context,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,
        max_size=None,
        **LEGACY,
    )


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def close_code_after_upgrade(sock: socket.socket) -> int | None:
    """The close code of the first close frame the server writes on ``sock`` now on."""
    return close_frame_code(b"HTTP/1.1 101\r\n\r\n" + read_all(sock))


def stubborn_client(port: int) -> socket.socket:
    """An upgraded raw client that will never answer anything."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.sendall(upgrade_request("/stubborn"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert status_of(head) == 101
    return sock


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = make_certificate(tmp_path)
    server = server_context(cert, key)
    return server, client_context(cert)


def test_trio_is_the_library_not_this_module() -> None:
    imported = vars(spoc_sockets.trio)["trio"]
    assert imported is sys.modules["trio"]
    assert imported.__name__ == "trio" and imported is trio


def test_cancellation_is_a_graceful_shutdown() -> None:
    router = make_router()
    running = serving(router)
    with running:
        port = running.value.port
        clients = [client(f"ws://{HOST}:{port}/echo") for _ in range(5)]
        stubborn = stubborn_client(port)
        wait_for(lambda: len(router.upgraded) == 6)
        running.cancel()
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.protocol.close_rcvd is not None
            assert ws.protocol.close_rcvd.code == 1001
        # the one that never answers is dropped after its close_timeout
        assert close_code_after_upgrade(stubborn) == 1001
        running.join()
    assert running.cancelled is True  # the cancellation went through, once done
    assert not router.upgraded
    assert not running.value.hub.connections
    with pytest.raises(OSError):  # no longer listening
        socket.create_connection((HOST, port), timeout=TIMEOUT)


def test_aclose_shuts_down_and_serve_returns() -> None:
    router = make_router()
    running = serving(router)
    with running:
        ws = client(f"ws://{HOST}:{running.value.port}/echo")
        wait_for(lambda: len(router.upgraded) == 1)
        running.run(running.value.aclose)
        assert not router.upgraded  # aclose returned once every connection ended
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
        running.join()
    assert running.cancelled is False


def test_handle_stream_with_your_own_listener(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    router = make_router()

    async def own_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)

        async def handler(stream: trio.SocketStream) -> None:
            tls_stream = trio.SSLStream(stream, server_context, server_side=True)
            await handle_stream(router, tls_stream)

        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(handler, listeners)

    running: TrioThread[int] = TrioThread(own_server)
    with running:
        url = f"wss://{HOST}:{running.value}/echo"
        clients = [client(url, client_context) for _ in range(3)]
        for i, ws in enumerate(clients):
            ws.send(f"m{i}")
            assert ws.recv(timeout=TIMEOUT) == f"m{i}"
        wait_for(lambda: len(router.upgraded) == 3)
        peers = {conn.request.peer for conn in router.upgraded}
        assert peers == {ws.socket.getsockname()[:2] for ws in clients}
        clients[0].close()
        wait_for(lambda: len(router.upgraded) == 2)
        running.cancel()  # each handle_stream closes its client gracefully
        for ws in clients[1:]:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1001
        running.join()
    assert running.cancelled is True
    assert not router.upgraded


def test_a_server_in_a_nursery_with_trio_run_directly() -> None:
    router = make_router()
    answers: list[str | bytes] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(spoc_sockets.trio.serve, router, HOST, 0))

            def talk() -> None:
                with client(f"ws://{HOST}:{server.port}/echo") as ws:
                    ws.send("from a worker thread")
                    answers.append(ws.recv(timeout=TIMEOUT))

            await trio.to_thread.run_sync(talk)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert answers == ["from a worker thread"]
    assert not router.upgraded
