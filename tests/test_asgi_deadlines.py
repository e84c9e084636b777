"""ASGIApp honours the session's deadlines on its own (nothing else happens meanwhile):
an undecided ``Deferred`` is refused with 503, and a close the server never confirms
ends at ``close_timeout``."""

from __future__ import annotations

import asyncio

from spoc_sockets import ChannelServer, Connection, Deferred, Request, Router
from spoc_sockets.asgi import ASGIApp

from .test_adapter_asgi import call, ws_scope


class Undecided(ChannelServer):
    def authenticate(self, request: Request) -> object:
        return Deferred()  # never decided


class ClosesAtOnce(ChannelServer):
    close_timeout = 0.1

    def on_connect(self, conn: Connection) -> None:
        conn.close(4000, "bye")


def test_an_undecided_deferred_is_refused_503_at_handshake_timeout() -> None:
    router = Router(handshake_timeout=0.1)
    router.add("/undecided", Undecided())
    scope = ws_scope("/undecided", extensions={"websocket.http.response": {}})
    sent = asyncio.run(call(ASGIApp(router), scope, [{"type": "websocket.connect"}]))
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 503
    assert sent[1]["body"] == b"the handshake was not decided in time\n"


def test_a_close_the_server_never_confirms_ends_at_close_timeout() -> None:
    router = Router()
    channel = router.add("/close", ClosesAtOnce())
    sent = asyncio.run(call(ASGIApp(router), ws_scope("/close"), [{"type": "websocket.connect"}]))
    assert sent == [
        {"type": "websocket.accept", "subprotocol": None},
        {"type": "websocket.close", "code": 4000, "reason": "bye"},
    ]
    assert channel.clients == frozenset() and not router.upgraded
