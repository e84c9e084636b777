"""What a channel's async hooks give, as a peer or the log reads it (TestClient awaits
hooks): a :class:`Reject` raised after the upgrade, an awaitable given for a decision."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from spoc_sockets import ChannelServer, Connection, Reject, Request, UsageError
from spoc_sockets.testing import HandshakeRejected, TestClient

from ..frames import upgrade_request
from .wire import Peer, Recorder, frame, parse_frames, router_with


class RejectsAfterTheUpgrade(ChannelServer):
    ping_interval = None

    async def on_connect(self, conn: Connection) -> None:
        if conn.request.query.get("at") == "connect":
            raise Reject(403, "too late")

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        raise Reject(403, "too late")


@pytest.mark.parametrize("path", ["/a?at=connect", "/a?at=message"])
def test_a_reject_raised_by_an_async_hook_after_the_upgrade_closes_1011(path: str) -> None:
    with (
        TestClient(router_with("/a", RejectsAfterTheUpgrade())) as client,
        client.connect(path) as ws,
    ):
        if path.endswith("message"):
            ws.send("hello")
        client.pump()
        assert (ws.close_code, ws.close_reason) == (1011, "internal error")


class DecidesWithAnAwaitable(ChannelServer):
    ping_interval = None

    def __init__(self) -> None:
        super().__init__()
        self.given: list[Coroutine[Any, Any, object]] = []

    async def authenticate(self, request: Request) -> object:
        async def user() -> object:
            return "ada"

        self.given.append(user())
        return self.given[-1]


def test_an_awaitable_given_as_the_decision_is_closed_and_the_log_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = DecidesWithAnAwaitable()
    with (
        caplog.at_level(logging.ERROR, "spoc_sockets"),
        TestClient(router_with("/a", channel)) as client,
        pytest.raises(HandshakeRejected) as refused,
    ):
        client.connect("/a")
    assert (refused.value.status, refused.value.body) == (500, b"internal server error\n")
    (record,) = [
        r for r in caplog.records if r.getMessage() == "authenticate gave no usable decision"
    ]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "authenticate returned an awaitable from its awaitable"
    (awaitable,) = channel.given  # closed, so Python warns of no "never awaited"
    assert inspect.getcoroutinestate(awaitable) == inspect.CORO_CLOSED


def test_a_connection_knows_its_route_when_it_opened_and_a_rising_id() -> None:
    router = router_with("/rooms/{room}", Recorder())
    first = Peer(router, now=12.5).handshake("/rooms/a")
    second = Peer(router, now=20.0).handshake("/rooms/b")
    assert (first.route, first.opened_at) == ("/rooms/{room}", 12.5)
    assert (second.route, second.opened_at) == ("/rooms/{room}", 20.0)
    assert second.id > first.id


@pytest.mark.parametrize("ending", ["close", "abort", "server close"])
def test_clients_forgets_a_connection_however_it_ends(ending: str) -> None:
    channel = Recorder(ping_interval=None)
    with TestClient(router_with("/r", channel)) as client:
        ws = client.connect("/r")
        (conn,) = channel.clients
        if ending == "close":
            ws.close()
        elif ending == "abort":
            ws.abort()
        else:
            conn.close(4000)
            client.pump()
        assert channel.clients == frozenset()
        assert len(channel.closed) == 1


def test_an_origin_refusal_says_whether_the_origin_was_wrong_or_missing() -> None:
    router = router_with("/o", Recorder(origins=["https://app.example"]))
    wrong, missing = Peer(router), Peer(router)
    wrong.send(upgrade_request("/o", extra="Origin: https://evil.example\r\n"))
    missing.send(upgrade_request("/o"))
    assert (wrong.answer.status, wrong.answer.body) == (403, b"origin not allowed")
    assert (missing.answer.status, missing.answer.body) == (403, b"an Origin header is required")


def test_a_subprotocol_refusal_lists_what_was_offered() -> None:
    peer = Peer(router_with("/s", Recorder(subprotocols=["chat"])))
    peer.send(upgrade_request("/s", extra="Sec-WebSocket-Protocol: a, b\r\n"))
    assert (peer.answer.status, peer.answer.body) == (
        400,
        b"none of the subprotocols a, b is supported",
    )


class Failing:
    """A hook that is no function: the log names it by its repr."""

    def __call__(self, conn: Connection, message: str | bytes) -> None:
        raise RuntimeError("secret")

    def __repr__(self) -> str:
        return "<the failing hook>"


class RaisesOnMessage(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        raise RuntimeError("secret")


@pytest.mark.parametrize("hook", ["method", "object"])
def test_a_hook_that_raises_is_logged_by_its_name(
    hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel = RaisesOnMessage()
    logged = "RaisesOnMessage.on_message raised"
    if hook == "object":
        channel.on_message = Failing()  # type: ignore[method-assign]
        logged = "<the failing hook> raised"
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer = Peer(router_with("/h", channel))
        peer.handshake("/h")
        peer.send(frame(0x1, b"boom"))
    assert peer.close_code == 1011
    assert logged in [record.getMessage() for record in caplog.records]


class ReturnsAValue(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        super().on_message(conn, message)
        conn.send(message)
        return message  # type: ignore[return-value]  # not awaitable: ignored


def test_a_plain_hook_that_returns_a_value_is_done() -> None:
    channel = ReturnsAValue()
    peer = Peer(router_with("/v", channel))
    peer.handshake("/v")
    peer.send(frame(0x1, b"one") + frame(0x1, b"two"))
    assert channel.messages == ["one", "two"]
    assert peer.close_code is None


def test_a_bytes_like_message_is_sent_as_it_was_when_sent() -> None:
    channel = Recorder()
    peer = Peer(router_with("/b", channel))
    conn = peer.handshake("/b")
    data = bytearray(b"abc")
    conn.send(data)
    conn.send(memoryview(b"def"))
    data[:] = b"xyz"  # a later change does not leak into the queued message
    peer.flush()
    assert [f.payload for f in parse_frames(bytes(peer.out).partition(b"\r\n\r\n")[2])] == [
        b"abc",
        b"def",
    ]


def test_a_message_of_another_type_is_refused_naming_it() -> None:
    conn = Peer(router_with("/b", Recorder())).handshake("/b")
    with pytest.raises(UsageError) as refused:
        conn.send(42)  # type: ignore[arg-type]
    assert str(refused.value) == "a message is str or bytes, not int"


class Decides(Recorder):
    def authenticate(self, request: Request) -> object:
        return {"ada": "ada", "no": False}[request.query["who"]]


def test_what_a_plain_authenticate_returns_is_the_user_or_a_refusal() -> None:
    channel = Decides()
    router = router_with("/d", channel)
    assert Peer(router).handshake("/d?who=ada").user == "ada"
    refused = Peer(router)
    refused.send(upgrade_request("/d?who=no"))
    assert (refused.answer.status, refused.answer.body) == (403, b"forbidden")
