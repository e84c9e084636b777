"""The ASGI adapter: the same channels inside uvicorn, hypercorn, Starlette or FastAPI.

``ASGIApp(router, fallback=None)`` is an ASGI 3 application. A ``websocket`` scope becomes
the same :class:`~spoc_sockets.Request` and goes through the same routing, checks,
authentication and hooks (a :class:`~spoc_sockets._session.Session` makes those decisions,
as for the byte-level adapters, and its :class:`~spoc_sockets._session.ActionQueue` hands
them over as actions to send);
a refusal is sent as an HTTP response through the server's ``websocket.http.response``
extension when it has it (uvicorn does), else as a close before accept (the server then
answers 403). ``http`` scopes go to the router's plain HTTP routes
(:meth:`Router.add_http <spoc_sockets.Router.add_http>`), then to ``fallback``, else 404.

The ASGI server frames messages, answers pings and runs the closing handshake, so its own
limits apply too (uvicorn's ``--ws-max-size``, ``--ws-ping-interval``). The adapter runs on
an asyncio event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from ._session import CLOSED, Accept, Action, ActionQueue, Refuse, Session
from .channel import CloseRequest, Outgoing
from .request import Request
from .router import Response, Router

__all__ = ["ASGIApp"]

#: Seconds a finished session's last actions (its close frame) may take to reach the
#: server; past them (a client that does not read) the application returns anyway and
#: the server's own close deadline ends the connection.
_LAST_SENDS_TIMEOUT = 5.0

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGI = Callable[[Scope, Receive, Send], Awaitable[None]]


def _request(scope: Scope) -> Request:
    """The scope as a :class:`~spoc_sockets.Request`, its path relative to the mount
    point: ``root_path`` (set by Starlette's ``Mount``, or uvicorn's ``--root-path``) is
    cut off the front of the raw path when it starts with it."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    root = (scope.get("root_path") or "").encode()
    if root and raw_path.startswith(root):
        raw_path = raw_path[len(root) :]
    query = scope.get("query_string", b"")
    target = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    client = scope.get("client")
    peer = (client[0], client[1]) if client else None
    return Request.parse(scope.get("method", "GET"), target, headers, peer)


class ASGIApp:
    """Serve ``router``'s channels as an ASGI application."""

    def __init__(self, router: Router, fallback: ASGI | None = None) -> None:
        self.router = router
        self.fallback = fallback
        self._sessions: set[Session] = set()
        self._refusing = False
        self._drained: asyncio.Event | None = None

    async def shutdown(self) -> None:
        """Graceful shutdown: 503 to new handshakes, close 1001 to every client, and
        return once all are gone (each within its channel's ``close_timeout``).

        Call it before stopping the ASGI server: uvicorn, for one, closes WebSockets
        with 1012 itself before the lifespan shutdown (which also calls this).
        """
        self._refusing = True
        self._drained = asyncio.Event()
        for session in list(self._sessions):
            session.shutdown()
        if self._sessions:
            await self._drained.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "http":
            response = self.router.answer_http(_request(scope))
            if response is not None:
                await self._respond(send, response)
            elif self.fallback is not None:
                await self.fallback(scope, receive, send)
            else:
                await self._respond(send, Response(404, "not found\n"))
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        readable = asyncio.Event()  # set while the session takes input
        hooks: set[asyncio.Task[None]] = set()

        def wakeup() -> None:
            loop.call_soon_threadsafe(woken.set)

        def spawn(coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
            task = loop.create_task(coroutine)
            hooks.add(task)
            task.add_done_callback(hooks.discard)
            return task.cancel

        first = await receive()
        if first["type"] != "websocket.connect":
            return
        request = _request(scope)
        queue = ActionQueue(wakeup)
        session = Session(self.router, loop.time(), queue, peer=request.peer, spawn=spawn)
        session.start(request, loop.time(), refusing=self._refusing)
        self._sessions.add(session)
        denial = "websocket.http.response" in scope.get("extensions", {})
        # the sends run apart, so that a client that does not read (the server's send
        # waits for its transport to drain) never stops the session's own turns: its
        # limits, its close and its deadlines go on as on the byte adapters
        outbox: asyncio.Queue[list[Action] | None] = asyncio.Queue()
        sender = asyncio.ensure_future(self._sender(send, outbox, queue, denial, woken))

        def turn() -> None:
            session.turn(loop.time())
            actions = queue.take()
            if actions:
                outbox.put_nowait(actions)

        async def answered() -> None:
            """Hand what the last message caused to the sender, and let it send, before
            the next message is asked for: unless the client's transport is full, the
            answers are written before anything the server reports after that message
            (a frame error, say), as on the byte adapters. A sender that waits for a
            client that does not read holds nothing up: its input is still read."""
            turn()  # (the session woke the main loop if it acted: no wake-up here)
            await asyncio.sleep(0)  # the sender, woken by the batch, runs first

        reader = asyncio.ensure_future(self._read(session, receive, loop, readable, answered))
        try:
            while True:
                turn()
                if session.state is CLOSED:
                    outbox.put_nowait(None)  # the last actions go out, unless stuck
                    await asyncio.wait({sender}, timeout=_LAST_SENDS_TIMEOUT)
                    return
                if not session.input_paused:
                    readable.set()
                deadline = session.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                waiter = asyncio.ensure_future(woken.wait())
                await asyncio.wait(
                    {waiter, reader, sender}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                woken.clear()
                if reader.done() or sender.done():  # disconnected (or the server failed)
                    session.disconnected(1006)
                session.handle_timeout(loop.time())
        finally:
            for task in (reader, sender):
                if task.done() and not task.cancelled():
                    task.exception()  # a failed receive or send: the session saw 1006
                task.cancel()
            session.disconnected(1006)
            self._sessions.discard(session)
            if not self._sessions and self._drained is not None:
                self._drained.set()

    @classmethod
    async def _sender(
        cls,
        send: Send,
        outbox: asyncio.Queue[list[Action] | None],
        queue: ActionQueue,
        denial: bool,
        woken: asyncio.Event,
    ) -> None:
        """Send each batch of the session's actions in order; once sent, their messages
        no longer count in ``buffered_amount``. ``None`` ends it."""
        while (actions := await outbox.get()) is not None:
            for action in actions:
                await cls._send(send, action, denial)
            queue.delivered(actions)
            woken.set()  # room under max_buffered_amount again: the session's turn

    @staticmethod
    async def _read(
        session: Session,
        receive: Receive,
        loop: asyncio.AbstractEventLoop,
        readable: asyncio.Event,
        answered: Callable[[], Awaitable[None]],
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                while session.input_paused:  # an async hook runs: this message waits
                    readable.clear()
                    await readable.wait()
                text = message.get("text")
                session.receive(text if text is not None else message["bytes"], loop.time())
                await answered()
            elif message["type"] == "websocket.disconnect":
                session.disconnected(message.get("code", 1005), message.get("reason") or "")
                return

    @classmethod
    async def _send(cls, send: Send, action: object, denial: bool) -> None:
        if isinstance(action, Accept):
            await send({"type": "websocket.accept", "subprotocol": action.subprotocol})
        elif isinstance(action, Refuse):
            if denial:
                refusal = Response(action.status, action.body, headers=action.headers)
                await cls._respond(send, refusal, "websocket.http.response")
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif isinstance(action, CloseRequest):
            await send({"type": "websocket.close", "code": action.code, "reason": action.reason})
        elif isinstance(action, Outgoing):
            message = action.message
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})

    @staticmethod
    async def _respond(send: Send, response: Response, prefix: str = "http.response") -> None:
        body = response.body.encode() if isinstance(response.body, str) else response.body
        headers = [(k.lower().encode(), v.encode()) for k, v in response.headers]
        headers += [(b"content-type", response.content_type.encode()), (b"connection", b"close")]
        await send({"type": f"{prefix}.start", "status": response.status, "headers": headers})
        await send({"type": f"{prefix}.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Run :meth:`shutdown` at the lifespan shutdown, and serve again after a new
        startup (a test suite runs one lifespan per test); the fallback (a Starlette or
        FastAPI app, say) still sees every lifespan event and answers them."""

        async def receive_and_shut_down() -> MutableMapping[str, Any]:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._refusing = False
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
            return message

        if self.fallback is not None:
            await self.fallback({"type": "lifespan"}, receive_and_shut_down, send)
            return
        while True:
            message = await receive_and_shut_down()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
