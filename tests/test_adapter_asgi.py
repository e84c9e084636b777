"""ASGIApp specifics: HTTP scopes, fallback, lifespan, servers without denial responses."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from spoc_sockets import ChannelServer, Connection, Reject, Request, Response, Router
from spoc_sockets.asgi import ASGIApp

Message = MutableMapping[str, Any]


class Echo(ChannelServer):
    def authenticate(self, request: Request) -> object:
        if request.query.get("deny"):
            raise Reject(401, "no")
        return None

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def make_router() -> Router:
    router = Router()
    router.add("/echo", Echo())
    router.add_http("/", lambda request: Response(200, "<h1>hi</h1>", "text/html"))
    return router


async def call(
    app: ASGIApp, scope: Message, incoming: list[Message], wait_sends: int = 0
) -> list[Message]:
    sent: list[Message] = []
    queue = list(incoming)

    async def receive() -> Message:
        while queue and queue[0]["type"] == "websocket.disconnect" and len(sent) < wait_sends:
            await asyncio.sleep(0)  # a client that disconnects once it got its replies
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # nothing more: wait until cancelled
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


def http_scope(path: str, method: str = "GET") -> Message:
    return {"type": "http", "path": path, "raw_path": path.encode(), "method": method,
            "headers": [], "query_string": b""}  # fmt: skip


def ws_scope(path: str, query: bytes = b"", extensions: dict[str, Any] | None = None) -> Message:
    return {"type": "websocket", "path": path, "raw_path": path.encode(), "query_string": query,
            "headers": [], "subprotocols": [], "extensions": extensions or {}}  # fmt: skip


def test_http_route_fallback_and_404() -> None:
    async def fallback(scope: Message, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"fallback"})

    router = make_router()
    page = asyncio.run(call(ASGIApp(router), http_scope("/"), []))
    assert page[0]["status"] == 200 and page[1]["body"] == b"<h1>hi</h1>"
    assert (b"content-type", b"text/html") in page[0]["headers"]
    assert asyncio.run(call(ASGIApp(router), http_scope("/other"), []))[0]["status"] == 404
    other = asyncio.run(call(ASGIApp(router, fallback), http_scope("/other"), []))
    assert other[0]["status"] == 299
    plain = asyncio.run(call(ASGIApp(router), http_scope("/echo", "POST"), []))
    assert plain[0]["status"] == 405


def test_refusal_without_denial_extension_closes_before_accept() -> None:
    sent = asyncio.run(
        call(ASGIApp(make_router()), ws_scope("/echo", b"deny=1"), [{"type": "websocket.connect"}])
    )
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_refusal_with_denial_extension_is_an_http_response() -> None:
    scope = ws_scope("/echo", b"deny=1", {"websocket.http.response": {}})
    sent = asyncio.run(call(ASGIApp(make_router()), scope, [{"type": "websocket.connect"}]))
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert sent[1]["body"] == b"no"


def test_messages_and_disconnect_through_the_asgi_interface() -> None:
    router = make_router()
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.receive", "bytes": b"\x01"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent = asyncio.run(call(ASGIApp(router), ws_scope("/echo"), incoming, wait_sends=3))
    assert sent[0] == {"type": "websocket.accept", "subprotocol": None}
    assert {"type": "websocket.send", "text": "hello"} in sent
    assert {"type": "websocket.send", "bytes": b"\x01"} in sent
    assert not router.upgraded


def test_lifespan_completes() -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = asyncio.run(call(ASGIApp(make_router()), {"type": "lifespan"}, incoming))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_lifespan_through_a_fallback_app_still_shuts_down() -> None:
    seen: list[str] = []

    async def fallback(scope: Message, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    app = ASGIApp(make_router(), fallback)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = asyncio.run(call(app, {"type": "lifespan"}, incoming))
    assert seen == ["lifespan.startup", "lifespan.shutdown"]
    assert sent[-1] == {"type": "lifespan.shutdown.complete"}
    assert app._refusing  # the app's own shutdown ran


def test_http_route_errors_and_raw_paths() -> None:
    router = make_router()

    def broken(request: Request) -> Response:
        raise RuntimeError("secret")

    router.add_http("/broken", broken)
    answer = asyncio.run(call(ASGIApp(router), http_scope("/broken"), []))
    assert answer[0]["status"] == 500 and b"secret" not in answer[1]["body"]
    scope = http_scope("/echo")
    scope["raw_path"] = b"/ech%6F"  # routing uses the raw path, decoded per segment
    assert asyncio.run(call(ASGIApp(router), scope, []))[0]["status"] == 426


class Flood(ChannelServer):
    max_buffered_amount = 1000
    max_message_size = 100

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        for _ in range(10):
            conn.send(b"x" * 300)


def test_session_limits_refusals_and_overflow() -> None:
    router = Router()
    router.add("/flood", Flood())
    app = ASGIApp(router)
    connect_msg: Message = {"type": "websocket.connect"}
    # a message past the limit, then one that floods past max_buffered_amount
    bye: Message = {"type": "websocket.disconnect", "code": 1006}  # after the close is sent
    too_big = [connect_msg, {"type": "websocket.receive", "text": "x" * 101}, bye]
    sent = asyncio.run(call(app, ws_scope("/flood"), too_big, wait_sends=2))
    assert sent[-1] == {"type": "websocket.close", "code": 1009, "reason": "message over 100 bytes"}
    flood = [connect_msg, {"type": "websocket.receive", "text": "go"}, bye]
    sent = asyncio.run(call(app, ws_scope("/flood"), flood, wait_sends=2))
    assert sent[0]["type"] == "websocket.accept"  # the accept is never discarded
    assert sent[-1] == {"type": "websocket.close", "code": 1008, "reason": "slow consumer"}
    assert not router.upgraded

    async def shut_then_connect() -> list[Message]:
        await asyncio.wait_for(app.shutdown(), timeout=5)
        scope = ws_scope("/flood", extensions={"websocket.http.response": {}})
        return await call(app, scope, [connect_msg])

    refused = asyncio.run(shut_then_connect())
    assert refused[0]["status"] == 503


def test_unknown_websocket_path_is_404_through_the_denial_response() -> None:
    scope = ws_scope("/nowhere", extensions={"websocket.http.response": {}})
    sent = asyncio.run(call(ASGIApp(make_router()), scope, [{"type": "websocket.connect"}]))
    assert sent[0]["status"] == 404


def test_a_new_lifespan_startup_serves_again_after_a_shutdown() -> None:
    """One lifespan per test (as FastAPI's TestClient does): the second still serves."""
    app = ASGIApp(make_router())
    session = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def one_lifespan() -> Message:
        events: asyncio.Queue[Message] = asyncio.Queue()
        sent: asyncio.Queue[Message] = asyncio.Queue()
        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, events.get, sent.put))
        await events.put({"type": "lifespan.startup"})
        assert await asyncio.wait_for(sent.get(), 5) == {"type": "lifespan.startup.complete"}
        accepted = (await call(app, ws_scope("/echo"), session, wait_sends=1))[0]
        await events.put({"type": "lifespan.shutdown"})
        assert await asyncio.wait_for(sent.get(), 5) == {"type": "lifespan.shutdown.complete"}
        await asyncio.wait_for(lifespan, 5)
        return accepted

    for _ in range(2):
        assert asyncio.run(one_lifespan()) == {"type": "websocket.accept", "subprotocol": None}


@pytest.mark.parametrize("path", ["/ws/echo", "/echo"])
def test_a_mount_prefix_is_not_part_of_the_channel_path(path: str) -> None:
    """Under a mount (``root_path="/ws"``) the channel at /echo serves /ws/echo; a server
    that already cut the prefix off ``path`` and ``raw_path`` is served the same."""
    scope = ws_scope(path) | {"root_path": "/ws"}
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent = asyncio.run(call(ASGIApp(make_router()), scope, incoming, wait_sends=1))
    assert sent[0] == {"type": "websocket.accept", "subprotocol": None}


def test_the_node_module_names_are_importable_from_the_package() -> None:
    from spoc_sockets import create_chat_server, create_stream_server, setup_websocket_handlers

    router = setup_websocket_handlers(create_chat_server(), create_stream_server())
    assert sorted(router.channels) == ["/chat", "/stream", "/stream/{stream_id}"]
