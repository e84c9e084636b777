"""What the plain-threads adapter promises, over real loopback sockets.

TLS, many idle connections on one loop thread, churn without leaks, graceful shutdown,
sends from many threads, a slow consumer bounded by the core, refusals over a socket.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import ChannelServer, Connection, ConnectionState, Router
from spoc_sockets.threads import Server, serve

from .behaviour.harness_net import wait_for
from .frames import client_frame, status_of, upgrade_request

HOST = "127.0.0.1"
TIMEOUT = 20.0


class Echo(ChannelServer):
    max_message_size = 32 * 2**20
    max_buffered_amount = 64 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class Room(ChannelServer):
    pass


class Slow(ChannelServer):
    """Echoes; a small outbound limit, past which the client is closed with 1008."""

    max_buffered_amount = 256 * 1024
    overflow = "close"
    close_timeout = 1.0
    ping_interval = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.closed: list[int] = []

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append(code)


def make_router(**options: Any) -> Router:
    router = Router(handshake_timeout=options.pop("handshake_timeout", 10.0))
    router.add("/echo", Echo(**options))
    router.add("/room", Room())
    return router


@contextmanager
def running(router: Router, **options: Any) -> Iterator[tuple[Server, threading.Thread]]:
    with serve(router, HOST, 0, **options) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield server, thread
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "serve_forever did not return after shutdown()"


def ws_connect(port: int, path: str = "/echo", **options: Any) -> ContextManager[ClientConnection]:
    """A ``websockets`` client (sync), to use in a ``with`` block or an ExitStack."""
    scheme = "wss" if "ssl" in options else "ws"
    return connect(
        f"{scheme}://{HOST}:{port}{path}",
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,
        max_size=None,
        compression=None,
        **options,
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raw_upgrade(
    port: int, path: str = "/echo", rcvbuf: int | None = None
) -> tuple[socket.socket, bytes]:
    """A raw socket past the handshake, and the bytes read after the 101 head."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect((HOST, port))
    sock.sendall(upgrade_request(path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    assert status_of(head) == 101
    return sock, rest


def read_until_eof(sock: socket.socket, start: bytes = b"") -> bytes:
    """What the server writes until it closes (a reset counts as closing)."""
    chunks = [start]
    try:
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, n, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack("!H", data[i : i + 2]), i + 2
        elif n == 127:
            (n,), i = struct.unpack("!Q", data[i : i + 8]), i + 8
        frames.append((opcode, data[i : i + n]))
        i += n
    return frames


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it): a self-signed cert for 127.0.0.1."""
    directory: Path = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


def test_tls_echo(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    router = make_router()
    with running(router, ssl=server_ctx) as (server, _):
        with ws_connect(server.port, ssl=client_ctx) as ws:
            ws.send("héllo")
            assert ws.recv(timeout=TIMEOUT) == "héllo"
            big = os.urandom(8 * 2**20)  # more than the socket takes at once
            ws.send(big)
            assert ws.recv(timeout=TIMEOUT) == big
            assert len(router.upgraded) == 1
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
        with (
            pytest.raises(InvalidStatus) as refused,
            ws_connect(server.port, "/nowhere", ssl=client_ctx),
        ):
            pass
        assert refused.value.response.status_code == 404
        wait_for(lambda: not router.upgraded and not server.hub.connections)


def test_tls_handshake_is_bounded_and_failures_are_contained(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    router = make_router(handshake_timeout=0.5)
    with running(router, ssl=server_ctx) as (server, _):
        # a client that never starts TLS is dropped at the handshake deadline
        with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as silent:
            assert silent.recv(1024) == b""
        # plain HTTP to the TLS port: the TLS handshake fails, the socket is closed
        with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as plain:
            plain.sendall(upgrade_request("/echo"))
            assert b"101" not in read_until_eof(plain)
        wait_for(lambda: not server.hub.connections)
        with ws_connect(server.port, ssl=client_ctx) as ws:
            ws.send("still serving")
            assert ws.recv(timeout=TIMEOUT) == "still serving"


# -- scale and churn ------------------------------------------------------------------


def test_a_thousand_idle_connections_need_no_thread_each() -> None:
    router = make_router()
    baseline = threading.active_count()
    with running(router) as (server, _):
        clients = [raw_upgrade(server.port) for _ in range(1000)]
        wait_for(lambda: len(router.upgraded) == 1000)
        assert threading.active_count() <= baseline + 1  # the loop thread, nothing more
        assert threading.active_count() < 10
        sock, _ = clients[500]
        sock.sendall(client_frame(0x1, b"still there?"))
        answer = b""
        while len(answer) < 2 + len(b"still there?"):
            answer += sock.recv(4096)
        assert server_frames(answer) == [(0x1, b"still there?")]
        for sock, _ in clients:
            sock.close()
        wait_for(lambda: not router.upgraded and not server.hub.connections)


def test_churn_of_2000_connections_leaks_nothing() -> None:
    router = make_router()
    with running(router) as (server, _):
        before = open_fds()
        for i in range(2000):
            with ws_connect(server.port) as ws:
                if i % 100 == 0:
                    ws.send("ping")
                    assert ws.recv(timeout=TIMEOUT) == "ping"
                if i % 2:
                    ws.socket.shutdown(socket.SHUT_RDWR)  # abrupt: no close frame
                    ws.close_socket()
        wait_for(lambda: not router.upgraded and not server.hub.connections)
        wait_for(lambda: open_fds() == before)


# -- shutdown -------------------------------------------------------------------------


def test_graceful_shutdown() -> None:
    router = Router()
    router.add("/echo", Echo(close_timeout=0.5))
    with serve(router, HOST, 0) as server, ExitStack() as stack:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        clients = [stack.enter_context(ws_connect(server.port)) for _ in range(10)]
        mute, rest = raw_upgrade(server.port)  # never answers the close frame
        half = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        half.sendall(b"GET /echo HTTP/1.1\r\n")  # a handshake in progress
        wait_for(lambda: len(router.upgraded) == 11 and len(server.hub.connections) == 12)
        server.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert not router.upgraded and not server.hub.connections
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert server_frames(read_until_eof(mute, rest)) == [
            (0x8, struct.pack("!H", 1001) + b"server shutting down")
        ]
        assert read_until_eof(half) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        server.serve_forever()  # finished: returns at once
    for sock in (mute, half):
        sock.close()


def test_leaving_the_context_shuts_down_gracefully() -> None:
    router = make_router()
    with ExitStack() as stack:
        with serve(router, HOST, 0) as server:
            thread = threading.Thread(target=server.serve_forever)
            thread.start()
            ws = stack.enter_context(ws_connect(server.port))
            wait_for(lambda: len(router.upgraded) == 1)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert not router.upgraded


def test_shutdown_from_a_hook_on_the_loop_thread() -> None:
    router = Router()
    holder: list[Server] = []

    @router.channel("/stop")
    class Stop(ChannelServer):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            holder[0].shutdown()  # must not wait for the loop it runs on

    with serve(router, HOST, 0) as server, ExitStack() as stack:
        holder.append(server)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        ws = stack.enter_context(ws_connect(server.port, "/stop"))
        ws.send("stop")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert not router.upgraded


# -- threads --------------------------------------------------------------------------


def test_send_and_broadcast_from_several_threads_at_once() -> None:
    router = make_router()
    room = router.channels["/room"]
    with running(router) as (server, _), ExitStack() as stack:
        echo_client = stack.enter_context(ws_connect(server.port))
        room_clients = [stack.enter_context(ws_connect(server.port, "/room")) for _ in range(3)]
        wait_for(lambda: len(router.upgraded) == 4)
        (conn,) = [c for c in router.upgraded if c.request.path == "/echo"]
        start = threading.Barrier(8, timeout=TIMEOUT)

        def sender(k: int) -> None:
            start.wait()
            for i in range(250):
                conn.send(f"{k}:{i}")
                if i < 100:
                    room.broadcast(f"{k}:{i}")

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "a send from a thread did not return"
        for client, count in [(echo_client, 8 * 250)] + [(c, 8 * 100) for c in room_clients]:
            received = [client.recv(timeout=TIMEOUT) for _ in range(count)]
            by_thread: dict[str, list[int]] = {}
            for message in received:
                assert isinstance(message, str)
                k, i = message.split(":")
                by_thread.setdefault(k, []).append(int(i))
            assert by_thread == {str(k): list(range(count // 8)) for k in range(8)}
            client.close()
        wait_for(lambda: not router.upgraded)


# -- slow consumer --------------------------------------------------------------------


def test_a_client_that_never_reads_is_closed_with_1008() -> None:
    router = Router()
    slow = router.add("/slow", Slow())
    with running(router) as (server, _):
        sock, rest = raw_upgrade(server.port, "/slow", rcvbuf=16384)
        wait_for(lambda: len(router.upgraded) == 1)
        (conn,) = router.upgraded
        frame = client_frame(0x2, os.urandom(8192))
        highest, sent = 0, 0
        # each read of the server is echoed; once the socket is full the adapter pauses
        # the connection, and the core's limit closes it
        while conn.state is ConnectionState.OPEN and sent < 64 * 2**20:
            sock.sendall(frame)
            sent += len(frame)
            highest = max(highest, conn.buffered_amount)
        assert conn.state is not ConnectionState.OPEN
        frames = server_frames(read_until_eof(sock, rest))
        assert frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1008
        assert all(op == 0x2 for op, _ in frames[:-1])
        assert highest <= Slow.max_buffered_amount
        wait_for(lambda: not router.upgraded and not server.hub.connections)
        assert slow.closed == [1008]
        sock.close()


def test_output_that_cannot_drain_is_dropped_after_drain_timeout() -> None:
    router = Router()
    router.add("/slow", Slow())
    with running(router, drain_timeout=0.5) as (server, _):
        before = open_fds()
        sock, _ = raw_upgrade(server.port, "/slow", rcvbuf=16384)
        (conn,) = router.upgraded
        frame = client_frame(0x2, os.urandom(8192))
        while conn.state is ConnectionState.OPEN:
            sock.sendall(frame)
        # nobody reads: close_timeout, then drain_timeout, then the socket is freed
        wait_for(lambda: not router.upgraded and not server.hub.connections)
        wait_for(lambda: open_fds() == before + 1)  # only the client's socket remains
        sock.close()


# -- refusals over a real socket ------------------------------------------------------


def test_shutdown_timeout_bounds_a_client_that_never_answers() -> None:
    from spoc_sockets import ChannelServer
    from spoc_sockets.threads import serve as serve_threads

    from .frames import upgrade_request

    router = Router()
    router.add("/slow", ChannelServer(close_timeout=60.0, ping_interval=None))
    with serve_threads(router, "127.0.0.1", 0, shutdown_timeout=0.5) as server:
        loop = threading.Thread(target=server.serve_forever)
        loop.start()
        mute = socket.create_connection(("127.0.0.1", server.port))
        mute.sendall(upgrade_request("/slow"))  # then never reads nor answers the close
        deadline = threading.Event()
        while not router.upgraded and not deadline.wait(0.01):
            pass
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        stopper.join(timeout=20)
        assert not stopper.is_alive()  # well before the channel's 60 s close_timeout
        loop.join(timeout=5)
        assert not router.upgraded
        mute.close()
