"""What an ``async def authenticate`` decides, as the peer reads it (TestClient awaits
hooks), and what a server that cannot await answers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from spoc_sockets import ChannelServer, Connection, Hub, Reject, Request, Router
from spoc_sockets._session import Refuse
from spoc_sockets.testing import HandshakeRejected, TestClient

from ..frames import upgrade_request
from .wire import Messages, Peer, close_payload, frame, parse_answer, router_with


class AsyncAuth(ChannelServer):
    ping_interval = None

    async def authenticate(self, request: Request) -> object:
        what = request.query.get("do")
        if what == "raise-reject":
            raise Reject(401, "bad token", [("WWW-Authenticate", "Bearer")])
        if what == "return-reject":
            return Reject(402, "pay first", [("X-Price", "1")])
        if what == "raise":
            raise RuntimeError("secret")
        if what == "false":
            return False
        if what == "awaitable":
            return self._later()
        return "ada"

    async def _later(self) -> object:
        return "never"


def rejected(path: str) -> HandshakeRejected:
    with (
        TestClient(router_with("/a", AsyncAuth())) as client,
        pytest.raises(HandshakeRejected) as refused,
    ):
        client.connect(path)
    return refused.value


@pytest.mark.parametrize(
    ("query", "status", "body", "header"),
    [
        ("raise-reject", 401, b"bad token", ("www-authenticate", "Bearer")),
        ("return-reject", 402, b"pay first", ("x-price", "1")),
        ("false", 403, b"forbidden", None),
    ],
)
def test_an_async_refusal_is_answered_with_its_status_body_and_headers(
    query: str, status: int, body: bytes, header: tuple[str, str] | None
) -> None:
    refusal = rejected(f"/a?do={query}")
    assert (refusal.status, refusal.body) == (status, body)
    if header is not None:
        assert header in refusal.headers


@pytest.mark.parametrize(
    ("query", "logged"),
    [("raise", "an async hook raised"), ("awaitable", "authenticate gave no usable decision")],
)
def test_an_async_failure_is_500_and_logged(
    query: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        refusal = rejected(f"/a?do={query}")
    assert (refusal.status, refusal.body) == (500, b"internal server error\n")
    assert logged in [record.getMessage() for record in caplog.records]


def test_an_async_acceptance_gives_the_user() -> None:
    with TestClient(router_with("/a", AsyncAuth())) as client, client.connect("/a") as ws:
        assert ws.open
        assert ws.server.connection is not None and ws.server.connection.user == "ada"


class ReturnsACoroutine(ChannelServer):
    def __init__(self) -> None:
        super().__init__()
        self.returned: list[Coroutine[Any, Any, object]] = []

    def authenticate(self, request: Request) -> Coroutine[Any, Any, object]:
        async def later() -> object:
            return "ada"

        self.returned.append(later())
        return self.returned[-1]


def test_a_server_that_cannot_await_refuses_500_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = ReturnsACoroutine()
    peer = Peer(router_with("/c", channel))
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer.send(upgrade_request("/c"))
    assert (peer.answer.status, peer.answer.body) == (500, b"internal server error\n")
    messages = [record.getMessage() for record in caplog.records]
    assert "authenticate is async and this server cannot await it" in messages
    (coroutine,) = channel.returned  # closed, so Python warns of no "never awaited"
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


class AsyncRaises(ChannelServer):
    ping_interval = None

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        raise RuntimeError("secret")


def test_an_async_hook_that_raises_closes_1011_internal_error() -> None:
    with TestClient(router_with("/a", AsyncRaises())) as client, client.connect("/a") as ws:
        ws.send("boom")
        client.pump()
        assert (ws.close_code, ws.close_reason) == (1011, "internal error")


class NotACoroutine:
    """An awaitable without ``close`` (as a Future is)."""

    def __await__(self) -> Any:
        yield None


class ReturnsAnAwaitable(ChannelServer):
    def authenticate(self, request: Request) -> object:
        return NotACoroutine()


def test_an_awaitable_without_close_is_refused_the_same_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = Peer(router_with("/c", ReturnsAnAwaitable()))
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer.send(upgrade_request("/c"))
    assert peer.answer.status == 500
    messages = [record.getMessage() for record in caplog.records]
    assert "authenticate is async and this server cannot await it" in messages


class WaitsForever(ChannelServer):
    async def authenticate(self, request: Request) -> object:
        await asyncio.Event().wait()
        return "never"


def test_an_async_authenticate_cancelled_by_a_stopping_server_never_accepts() -> None:
    router = Router()
    router.add("/w", WaitsForever())
    spawned: list[Coroutine[object, None, None]] = []
    request = Request.parse("GET", "/w", [])
    session = Messages(router, request, 0.0, lambda: None, spawn=spawned.append)

    async def stop_while_waiting() -> None:
        task = asyncio.ensure_future(spawned[0])
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_while_waiting())
    assert session.actions(0.0) == [Refuse(500, (), b"internal server error\n")]
    assert router.upgraded == frozenset()


class SlowEcho(ChannelServer):
    ping_interval = 5.0
    ping_timeout = 3.0

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def test_a_pong_is_awaited_afresh_once_an_async_hook_ends() -> None:
    """While the hook runs no pong can be read: ``ping_timeout`` counts from its end."""
    spawned: list[Coroutine[object, None, None]] = []
    hub = Hub(router_with("/s", SlowEcho()), spawn=spawned.append)
    server = hub.open(0.0)
    server.receive_data(upgrade_request("/s"), 0.0)
    answer, _ = parse_answer(server.data_to_send(0.0))
    assert answer.status == 101
    hub.handle_timeouts(5.0)
    assert server.data_to_send(5.0)[0] == 0x89  # the ping
    server.receive_data(frame(0x1, b"slow"), 6.0)
    assert server.input_paused
    asyncio.run(spawned.pop())
    assert server.data_to_send(7.5) == b"\x81\x04slow"  # the hook ended at 7.5
    assert not server.input_paused and server.next_deadline() == 10.5
    hub.handle_timeouts(10.4)
    assert server.data_to_send(10.4) == b"" and not server.should_close
    hub.handle_timeouts(10.5)
    closing = close_payload(1011, "keepalive ping timeout")
    assert server.data_to_send(10.5) == bytes([0x88, len(closing)]) + closing


class HooksReturnCoroutines(ChannelServer):
    """Plain hooks that return coroutines: a server without ``spawn`` cannot await them."""

    ping_interval = None

    def __init__(self) -> None:
        super().__init__()
        self.returned: list[Coroutine[Any, Any, None]] = []

    async def _later(self) -> None:
        return None

    def on_message(self, conn: Connection, message: str | bytes) -> Any:
        self.returned.append(self._later())
        return self.returned[-1]

    def on_close(self, conn: Connection, code: int, reason: str) -> Any:
        self.returned.append(self._later())
        return self.returned[-1]


def test_a_hook_that_returns_a_coroutine_where_none_is_awaited_is_1011_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = HooksReturnCoroutines()
    peer = Peer(router_with("/c", channel))
    peer.handshake("/c")
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer.send(frame(0x1, b"hello"))
        peer.send(frame(0x8, close_payload(1011, "internal error")))
    assert peer.close == (1011, "internal error")
    assert peer.server.should_close
    assert [r.getMessage() for r in caplog.records if r.name == "spoc_sockets.hooks"] == [
        "a hook is async and this server cannot await it",
        "on_close is async and this server cannot await it",
    ]
    assert [inspect.getcoroutinestate(c) for c in channel.returned] == [inspect.CORO_CLOSED] * 2


class PlainRaises(ChannelServer):
    ping_interval = None

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        raise RuntimeError("secret")


@pytest.mark.parametrize("awaits", [True, False], ids=["server-that-awaits", "cannot-await"])
def test_a_plain_hook_that_raises_closes_1011_and_logs_its_own_error_only(
    awaits: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither awaited as if it were async nor reported as an async hook."""
    spawned: list[Coroutine[object, None, None]] = []

    def spawn(coroutine: Coroutine[object, None, None]) -> Any:
        spawned.append(coroutine)
        with contextlib.suppress(StopIteration):  # run to its end (nothing it awaits waits)
            coroutine.send(None)
        return coroutine.close

    router = router_with("/p", PlainRaises())
    peer = Peer(router, hub=Hub(router, spawn=spawn if awaits else None))
    peer.handshake("/p")
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer.send(frame(0x1, b"boom"))
    assert peer.close == (1011, "internal error")
    assert spawned == []
    assert [record.getMessage() for record in caplog.records] == ["PlainRaises.on_message raised"]
