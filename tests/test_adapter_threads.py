"""What the plain-threads adapter promises beyond the behaviour suite, over real loopback
sockets: a bounded TLS handshake, many idle connections on one loop thread, shutdown
from the context manager and from a hook on the loop thread.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import ExitStack, contextmanager
from typing import Any, cast

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import ChannelServer, Connection, Router, _listen
from spoc_sockets.threads import Server, serve

from .behaviour.harness_net import wait_for
from .frames import client_frame, raw_upgrade, read_until_eof, server_frames, upgrade_request
from .selfsigned import client_context, make_certificate, server_context

HOST = "127.0.0.1"
TIMEOUT = 20.0


class Echo(ChannelServer):
    max_message_size = 32 * 2**20
    max_buffered_amount = 64 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def make_router(**options: Any) -> Router:
    router = Router(handshake_timeout=options.pop("handshake_timeout", 10.0))
    router.add("/echo", Echo(**options))
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


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it): a self-signed cert for 127.0.0.1."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    return server_context(cert, key), client_context(cert)


def test_tls_handshake_is_bounded_and_failures_are_contained(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    # long enough for the real client below to finish its handshakes on a loaded machine
    router = make_router(handshake_timeout=2.0)
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


# -- shutdown -------------------------------------------------------------------------


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


@pytest.mark.parametrize("vectored", [True, False])
def test_large_messages_cross_whole_with_or_without_vectored_writes(
    vectored: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames written with one ``sendmsg`` of their buffers, or one joined buffer where
    sockets have no ``sendmsg``: a client that does not read gets a write cut short (a
    view of the rest is kept), then, reading, every byte in order."""
    monkeypatch.setattr(_listen, "_VECTORED", vectored)
    messages = [os.urandom(3 * 2**20), b"small", os.urandom(70_000), os.urandom(4 * 2**20)]
    with running(make_router()) as (server, _):
        sock, rest = raw_upgrade(server.port)
        with sock:
            sender = threading.Thread(
                target=sock.sendall, args=(b"".join(client_frame(0x2, m) for m in messages),)
            )
            sender.start()
            (core,) = server.hub.connections
            link = cast("_listen.Link", core.transport)
            wait_for(lambda: any(isinstance(buffer, memoryview) for buffer in link.out))
            expected = sum(len(m) + (2 if len(m) < 126 else 10) for m in messages)
            data = bytearray(rest)
            while len(data) < expected:
                chunk = sock.recv(2**20)
                assert chunk, "closed before every echo came"
                data += chunk
            sender.join(TIMEOUT)
    assert [payload for _, payload in server_frames(bytes(data))] == messages


def test_a_link_forgets_what_was_written_and_every_empty_buffer_before_the_rest() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = _listen.Link(ours, lambda link, events: None)
        link.out = [b"", b"abc", b"", b"defg"]
        link._drop(0)
        assert link.out == [b"abc", b"", b"defg"]
        link._drop(2)  # a view keeps the rest of a buffer written in part
        assert [bytes(buffer) for buffer in link.out] == [b"c", b"", b"defg"]
        link._drop(1)
        assert link.out == [b"defg"]
        link._drop(4)
        assert link.out == []
