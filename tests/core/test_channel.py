"""What a channel's async hooks give, as a peer or the log reads it (TestClient awaits
hooks): a :class:`Reject` raised after the upgrade, an awaitable given for a decision."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from spoc_sockets import ChannelServer, Connection, Reject, Request
from spoc_sockets.testing import HandshakeRejected, TestClient

from .wire import Peer, Recorder, router_with


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
