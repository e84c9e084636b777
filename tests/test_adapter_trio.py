"""The trio adapter over real loopback sockets, with the ``websockets`` client."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
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


class Echo(ChannelServer):
    max_message_size = 4 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class Stubborn(ChannelServer):
    """For clients that never answer a close frame."""

    close_timeout = 0.3


def make_router(**stubborn: float) -> Router:
    router = Router(handshake_timeout=2.0)
    router.add("/echo", Echo())
    router.add("/stubborn", Stubborn(**stubborn))
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


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (``openssl req``, offline)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_trio_is_the_library_not_this_module() -> None:
    imported = vars(spoc_sockets.trio)["trio"]
    assert imported is sys.modules["trio"]
    assert imported.__name__ == "trio" and imported is trio


def test_tls_echo(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls
    router = make_router()
    with serving(router, ssl_context=server_context) as running:
        url = f"wss://{HOST}:{running.value.port}/echo"
        with client(url, client_context) as ws:
            ws.send("héllo")
            assert ws.recv(timeout=TIMEOUT) == "héllo"
            data = os.urandom(2**20)
            ws.send(data)
            assert ws.recv(timeout=TIMEOUT) == data
            (conn,) = router.upgraded
            assert conn.request.peer == ws.socket.getsockname()[:2]
        wait_for(lambda: not router.upgraded)
        # the certificate is really in use: a client that does not trust it fails
        with pytest.raises(ssl.SSLCertVerificationError):
            client(url, ssl.create_default_context())
        # and plain HTTP on the TLS port never reaches the handshake
        sock = socket.create_connection((HOST, running.value.port), timeout=TIMEOUT)
        sock.sendall(upgrade_request("/echo"))
        assert b"101" not in read_all(sock)
        wait_for(lambda: not running.value.hub.connections)
        assert not router.upgraded


def test_churn_of_2000_connections_leaks_nothing() -> None:
    router = make_router()
    with serving(router) as running:
        url = f"ws://{HOST}:{running.value.port}/echo"
        before = fd_count()
        for i in range(2000):
            ws = client(url)
            if i % 100 == 0:
                ws.send("ping")
                assert ws.recv(timeout=TIMEOUT) == "ping"
            if i % 2:
                ws.socket.shutdown(socket.SHUT_RDWR)  # abrupt: no close frame
                ws.close_socket()
            else:
                ws.close()
        wait_for(lambda: not router.upgraded)
        wait_for(lambda: not running.value.hub.connections)
        wait_for(lambda: fd_count() <= before)


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


def test_shutdown_timeout_bounds_a_stuck_shutdown() -> None:
    router = make_router(close_timeout=3600)
    running = serving(router, shutdown_timeout=0.2)
    with running:
        stubborn = stubborn_client(running.value.port)
        wait_for(lambda: len(router.upgraded) == 1)
        running.cancel()
        assert close_code_after_upgrade(stubborn) == 1001
        running.join()
    assert not router.upgraded


def test_send_from_another_thread() -> None:
    router = make_router()
    with serving(router) as running:
        ws = client(f"ws://{HOST}:{running.value.port}/echo")
        wait_for(lambda: len(router.upgraded) == 1)
        (conn,) = router.upgraded

        def sender(t: int) -> None:
            for i in range(200):
                conn.send(f"{t}:{i}")

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "a send from a thread did not return"
        received = [ws.recv(timeout=TIMEOUT) for _ in range(800)]
        for t in range(4):  # each thread's messages arrive, in its order
            assert [m for m in received if str(m).startswith(f"{t}:")] == [
                f"{t}:{i}" for i in range(200)
            ]
        ws.close()
    # the run is over: a late send from a thread is discarded, not an error
    conn.send("too late")


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
