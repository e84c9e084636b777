"""A connection's life as a client sees it, on every harness: TLS, churn, sends from
many threads, clients that do not read, graceful shutdown and its deadlines.

Deadlines are asserted as bounds ("dropped within close_timeout + drain_timeout + a
margin"), never as exact timings: a server may drop a connection that cannot drain at
once, or at its ``drain_timeout``; both hold.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable

import pytest
from websockets.sync.client import connect

from spoc_sockets import ChannelServer, Connection, ConnectionState, Deferred, Request, Router

from ..frames import client_frame, close_frame_code, server_frames, status_of, upgrade_request
from ..selfsigned import make_certificate
from .harness import TLS, Closed, Harness, Raw, Rejected, Served
from .harness_net import LEGACY, TIMEOUT, NetServed
from .test_behaviour import Echo

#: seconds a server may take past a deadline before the test calls it missed (the
#: machine may be loaded; what is asserted is the bound, not the speed)
MARGIN = 4.0


class Counting(Echo):
    """Counts connections and how they ended."""

    def __init__(self) -> None:
        super().__init__()
        self.connected = 0
        self.closed: dict[int, int] = {}

    def on_connect(self, conn: Connection) -> None:
        self.connected += 1

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed[code] = self.closed.get(code, 0) + 1


class Slow(ChannelServer):
    """Echoes; past a small outbound limit, the client is closed with 1008."""

    max_buffered_amount = 256 * 1024
    overflow = "close"
    ping_interval = None

    def __init__(self, close_timeout: float) -> None:
        super().__init__(close_timeout=close_timeout)
        self.closed: list[int] = []

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append(code)


class Undecided(ChannelServer):
    """``authenticate`` never decides: the handshake stays pending."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def authenticate(self, request: Request) -> object:
        self.asked += 1
        return Deferred()


def upgraded(served: Served, raw: Raw, path: str) -> Connection:
    """Upgrade ``raw`` on ``path`` (the only connection): its server side."""
    raw.send(upgrade_request(path))
    served.wait_for(lambda: len(served.router.upgraded) == 1)
    (conn,) = served.router.upgraded
    return conn


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLS:
    return TLS(*make_certificate(tmp_path_factory.mktemp("tls")))


def test_tls_echo(serve_tls: Harness, tls: TLS, request: pytest.FixtureRequest) -> None:
    """On every harness that serves TLS (``memory`` has no transport to encrypt)."""
    router = Router(handshake_timeout=5.0)
    router.add("/echo", Echo())
    with serve_tls(router, tls=tls) as served:
        client = served.connect("/echo")
        messages: list[str | bytes] = [
            "héllo",
            b"\x00\xff" * 10,
            "x" * 2**20,
            os.urandom(3 * 2**20),
        ]
        for message in messages:
            client.send(message)  # the larger ones: more than a socket takes at once
            assert client.receive() == message
        assert len(router.upgraded) == 1
        client.close()
        assert client.close_code == 1000
        with pytest.raises(Rejected) as refused:
            served.connect("/nowhere")
        assert refused.value.status == 404
        # the certificate is really in use: a client that does not trust it fails
        assert isinstance(served, NetServed)
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(
                f"wss://127.0.0.1:{served.server.port}/echo",
                ssl=ssl.create_default_context(),
                open_timeout=TIMEOUT,
                **LEGACY,
            )
        # and plain HTTP on the TLS port never reaches the handshake
        plain = served.raw()
        plain.send(upgrade_request("/echo"))
        assert b" 101 " not in plain.read_all()
        served.wait_for(lambda: not router.upgraded and served.held() == 0)
        served.connect("/echo").close()  # still serving
        # gone before the server stops (uvicorn would try to close it again: a warning)
        served.wait_for(lambda: served.held() == 0)
        if request.node.callspec.params["serve_tls"] != "asgi":  # uvicorn's TLS, not ours
            assert _closes_with_close_notify(served.server.port, tls)


def test_tls_sessions_resume(serve_tls: Harness, tls: TLS) -> None:
    """With session tickets (TLS 1.3 writes them from inside the server's reads), a client
    that comes back with its ticket resumes its session, and every connection is served."""
    router = Router()
    router.add("/echo", Echo())
    with serve_tls(router, tls=TLS(tls.cert, tls.key, tickets=2)) as served:
        assert isinstance(served, NetServed)
        context = tls.client_context()
        session = None
        for visit in range(3):
            plain = socket.create_connection(("127.0.0.1", served.server.port), timeout=TIMEOUT)
            with context.wrap_socket(plain, server_hostname="127.0.0.1", session=session) as sock:
                sock.sendall(upgrade_request("/echo"))
                head = _read_at_least(sock, b"", lambda data: b"\r\n\r\n" in data)
                assert status_of(head) == 101
                sock.sendall(client_frame(0x1, b"again"))  # (a client waits for the 101)
                rest = head.partition(b"\r\n\r\n")[2]
                echo = _read_at_least(sock, rest, lambda data: len(data) >= 7)
                assert server_frames(echo) == [(0x1, b"again")]
                assert sock.version() == "TLSv1.3"
                assert sock.session_reused is (visit > 0)
                session = sock.session
        served.wait_for(lambda: served.held() == 0)


def _read_at_least(sock: socket.socket, data: bytes, enough: Callable[[bytes], bool]) -> bytes:
    """``data`` and what ``sock`` reads after it, once ``enough(...)`` holds."""
    while not enough(data):
        chunk = sock.recv(65536)
        assert chunk, "closed too early"
        data += chunk
    return data


def _closes_with_close_notify(port: int, tls: TLS) -> bool:
    """Upgrade, close, and read to the end: whether the server's TLS ended with a
    close_notify (a truncation attack is indistinguishable from a bare TCP close)."""
    context = tls.client_context()
    plain = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    with context.wrap_socket(
        plain, server_hostname="127.0.0.1", suppress_ragged_eofs=False
    ) as sock:
        sock.sendall(upgrade_request("/echo"))
        sock.sendall(client_frame(0x8, struct.pack("!H", 1000)))
        try:
            while sock.recv(65536):
                pass
        except ssl.SSLEOFError:
            return False
    return True


# -- churn ------------------------------------------------------------------------------


def test_churn_of_2000_connections_leaks_nothing(serve: Harness) -> None:
    """2,000 connections, 25 open at a time, every other one dropped without a close
    frame: every one is counted open and closed (1000, or 1006), the upgraded set returns
    to empty and the server holds no transport (no file descriptor, over a socket)."""
    router = Router()
    echo = router.add("/echo", Counting())
    with serve(router) as served:
        for start in range(0, 2000, 25):
            batch = [served.connect("/echo") for _ in range(25)]
            for i, client in enumerate(batch, start):
                if i % 50 == 0:
                    client.send(f"ping {i}")
                    assert client.receive() == f"ping {i}"
                if i % 2:
                    client.abort()
                else:
                    client.close()
        served.wait_for(lambda: not router.upgraded and served.held() == 0)
        served.wait_for(lambda: sum(echo.closed.values()) == 2000)
        assert echo.connected == 2000
        # a connection lost without a close frame is 1006; uvicorn reports it to the
        # ASGI app as 1005 (ASGIApp passes the server's code on)
        assert echo.closed in ({1000: 1000, 1006: 1000}, {1000: 1000, 1005: 1000})


# -- sends from other threads -----------------------------------------------------------


def test_sends_and_broadcasts_from_many_threads_at_once(serve: Harness) -> None:
    """Eight threads send to one client and broadcast to a room at once: every message
    arrives, each thread's in its order; a send once the server is gone is discarded."""
    router = Router()
    router.add("/echo", Echo())
    room = router.add("/room", ChannelServer())
    with serve(router) as served:
        echo_client = served.connect("/echo")
        room_clients = [served.connect("/room") for _ in range(3)]
        served.wait_for(lambda: len(router.upgraded) == 4)
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
        for client, count in [(echo_client, 250)] + [(c, 100) for c in room_clients]:
            by_thread: dict[str, list[int]] = {}
            for _ in range(8 * count):
                k, i = str(client.receive()).split(":")
                by_thread.setdefault(k, []).append(int(i))
            assert by_thread == {str(k): list(range(count)) for k in range(8)}
            client.close()
        served.wait_for(lambda: not router.upgraded)
    conn.send("too late")  # discarded, and no error in the sender


# -- clients that do not read -----------------------------------------------------------


def flood_until_closed(conn: Connection, raw: Raw) -> int:
    """Send echoed frames on ``raw`` (which reads nothing) until the server stops
    ``conn``; the most output it held meanwhile."""
    frame = client_frame(0x2, os.urandom(8192))
    most = sent = 0
    while conn.state is ConnectionState.OPEN:
        assert sent < 64 * 2**20, "a client that never reads was never closed"
        raw.send(frame)
        sent += len(frame)
        most = max(most, conn.buffered_amount)
    return most


@pytest.mark.parametrize("reads_later", [True, False], ids=["reads-later", "never-reads"])
def test_a_client_that_does_not_read_is_closed_with_1008(serve: Harness, reads_later: bool) -> None:
    """The output the server holds for it stays under ``max_buffered_amount``; past it,
    the client is closed with 1008. Read later, the close frame follows the data; never
    read, the transport is dropped within ``close_timeout`` + ``drain_timeout`` (under
    ASGI, the server's own deadlines)."""
    router = Router()
    slow = router.add("/slow", Slow(close_timeout=1.0))
    with serve(router) as served:
        raw = served.raw(window=16384)
        conn = upgraded(served, raw, "/slow")
        assert flood_until_closed(conn, raw) <= Slow.max_buffered_amount
        if reads_later:
            frames = server_frames(raw.read_all().partition(b"\r\n\r\n")[2])
            assert frames[-1] == (0x8, struct.pack("!H", 1008) + b"slow consumer")
            assert {opcode for opcode, _ in frames[:-1]} <= {0x2}
        # the session ends at its close_timeout on every harness (under ASGI too, where
        # the server's send waits for a transport that never drains)
        served.wait_for(lambda: slow.closed == [1008] and not router.upgraded, timeout=1.0 + MARGIN)
        # the transport goes after the default drain_timeout (5 s); under ASGI, ASGIApp
        # gives its last sends 5 s, then uvicorn (with spoc_sockets.uvicorn.WSProtocol)
        # drops the transport at its close timeout (10 s)
        served.wait_for(lambda: served.held() == 0, timeout=5.0 + 10.0 + MARGIN)


def test_output_that_cannot_drain_is_dropped_by_drain_timeout(serve_drain_timeout: Harness) -> None:
    """Closed with 1008 and then never read: the server drops the transport no later
    than ``close_timeout`` + ``drain_timeout`` (the default 5 s would miss the bound)."""
    router = Router()
    slow = router.add("/slow", Slow(close_timeout=0.3))
    with serve_drain_timeout(router, drain_timeout=0.2) as served:
        raw = served.raw(window=16384)
        flood_until_closed(upgraded(served, raw, "/slow"), raw)
        served.wait_for(lambda: served.held() == 0, timeout=0.3 + 0.2 + MARGIN)
        assert not router.upgraded
        assert slow.closed == [1008]


# -- graceful shutdown ------------------------------------------------------------------


def test_graceful_shutdown_sends_1001_and_refuses_pending_handshakes_with_503(
    serve: Harness,
) -> None:
    """Open clients get 1001, one that never answers the close frame is dropped after
    its ``close_timeout``, a handshake still being decided gets 503; then no handshake
    is served (503, or no listener at all)."""
    router = Router(handshake_timeout=60.0)
    router.add("/echo", Echo())
    undecided = router.add("/undecided", Undecided())
    router.add("/silent", ChannelServer(close_timeout=1.0, ping_interval=None))
    with serve(router) as served:
        clients = [served.connect("/echo") for _ in range(5)]
        silent = served.raw()
        silent.send(upgrade_request("/silent"))  # and never answers anything
        pending = served.raw()
        pending.send(upgrade_request("/undecided"))
        served.wait_for(lambda: len(router.upgraded) == 6 and undecided.asked == 1)
        served.shutdown()
        for client in clients:
            with pytest.raises(Closed):
                client.receive()
            assert client.close_code == 1001
        assert close_frame_code(silent.read_all()) == 1001
        answer = pending.read_all()
        assert status_of(answer) == 503, answer[:100]
        assert not router.upgraded
        served.wait_for(lambda: served.held() == 0)
        try:
            served.connect("/echo")
        except Rejected as refused:
            assert refused.status == 503
        except OSError:
            pass  # no longer listening
        else:
            raise AssertionError("a handshake was served after the shutdown")


def test_shutdown_timeout_bounds_a_client_that_never_answers(
    serve_shutdown_timeout: Harness,
) -> None:
    """A client that never answers the close frame, on a channel that would wait an
    hour for it: the shutdown ends at ``shutdown_timeout`` (the harness fails a shutdown
    that takes over a minute), the client got its 1001 and its transport is dropped."""
    router = Router()
    router.add("/silent", ChannelServer(close_timeout=3600.0, ping_interval=None))
    with serve_shutdown_timeout(router, shutdown_timeout=0.5) as served:
        silent = served.raw()
        upgraded(served, silent, "/silent")
        served.shutdown()
        assert not router.upgraded
        assert close_frame_code(silent.read_all()) == 1001
        served.wait_for(lambda: served.held() == 0)


def test_a_request_half_sent_at_the_shutdown_is_closed_unanswered(serve_bytes: Harness) -> None:
    """Where the library reads the request itself: one not complete when the shutdown
    starts is closed without an answer (nothing was asked yet)."""
    router = Router()
    router.add("/echo", Echo())
    with serve_bytes(router) as served:
        half = served.raw()
        half.send(b"GET /echo HTTP/1.1\r\n")
        served.wait_for(lambda: served.held() == 1)
        served.shutdown()
        assert half.read_all() == b""
