"""The benchmark servers, one per process.

::

    python benchmarks/servers.py VARIANT [--cpu N]

``VARIANT`` is one of :data:`VARIANTS` (Node's ``ws`` server is ``node_ws.js`` beside
this file). Every variant serves the same contract on 127.0.0.1, on a free port:

* ``/echo`` sends every message back to its sender, as it came (text or binary);
* ``/broadcast`` sends every message to every client of ``/broadcast``, the sender
  included, with the library's own broadcast where it has one.

Keepalive pings and compression are off; the limits are generous (:data:`MAX_MESSAGE`,
:data:`MAX_BUFFERED`); the listen backlog is :data:`BACKLOG`. The spoc_sockets variants
also serve the built-in channels: ``/stream/{stream_id}`` (StreamServer) and ``/chat``
(ChatServer, with its rate limit lifted). The port is printed alone on the first line of
stdout once the server listens; SIGTERM stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # each server imports only its own library (its RSS stays its own)
    from spoc_sockets import Router

HOST = "127.0.0.1"
MAX_MESSAGE = 64 * 2**20  # bytes: far above the 1 MiB messages of the bulk scenario
MAX_BUFFERED = 256 * 2**20  # bytes of output queued per connection before a server gives up
BACKLOG = 1024  # listen queue, the same for every variant

Announce = Callable[[int], None]


def announce(port: int) -> None:
    """Tell the harness which port was picked."""
    print(port, flush=True)


def listening_socket() -> socket.socket:
    """A listening socket on a free port, for the servers that accept one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(BACKLOG)
    return sock


# -- spoc_sockets -------------------------------------------------------------------------


def spoc_router() -> Router:
    """The router shared by the spoc_sockets variants."""
    from spoc_sockets import ChannelServer, Connection, Request, Router
    from spoc_sockets.channels.chat import ChatServer
    from spoc_sockets.channels.stream import StreamServer

    class Echo(ChannelServer):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            conn.send(message)

    class Broadcast(ChannelServer):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            self.broadcast(message)

    class Stream(StreamServer):
        def can_publish(self, request: Request, stream_id: str, user: object) -> bool:
            return True  # the benchmark's publisher is a guest (the default refuses)

    options: dict[str, Any] = {"ping_interval": None, "ping_timeout": None, "compression": False}
    bulk = {"max_message_size": MAX_MESSAGE, "max_buffered_amount": MAX_BUFFERED}
    router = Router()
    router.add("/echo", Echo(**options, **bulk))
    router.add("/broadcast", Broadcast(**options, **bulk))
    router.add("/stream/{stream_id}", Stream(**options))
    router.add("/chat", ChatServer(**options, rate=1e9, burst=1e9))
    return router


def serve_spoc_asyncio(on_listen: Announce) -> None:
    from spoc_sockets.asyncio import serve

    router = spoc_router()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serve(router, HOST, 0, backlog=BACKLOG) as server:
            loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(server.close()))
            on_listen(server.port)
            await server.serve_forever()

    asyncio.run(main())


def serve_spoc_threads(on_listen: Announce) -> None:
    from spoc_sockets.threads import serve

    router = spoc_router()
    with serve(router, HOST, 0, backlog=BACKLOG) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for the loop, which runs in this (the main) thread
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        on_listen(server.port)
        server.serve_forever()


def serve_spoc_trio(on_listen: Announce) -> None:
    from functools import partial

    import trio

    from spoc_sockets.trio import serve

    router = spoc_router()

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, router, HOST, 0, backlog=BACKLOG))
                on_listen(server.port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()  # cancellation is a graceful shutdown
                    break

    trio.run(main)


def serve_uvicorn(app: Any, on_listen: Announce) -> None:
    """An ASGI application under uvicorn: one process, the asyncio loop, no compression."""
    import uvicorn

    sock = listening_socket()
    config = uvicorn.Config(
        app,
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        ws_max_size=MAX_MESSAGE,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        backlog=BACKLOG,
    )
    on_listen(sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])


def serve_spoc_asgi(on_listen: Announce) -> None:
    from spoc_sockets.asgi import ASGIApp

    serve_uvicorn(ASGIApp(spoc_router()), on_listen)


# -- the peers ----------------------------------------------------------------------------

WEBSOCKETS_OPTIONS: dict[str, Any] = {
    "compression": None,
    "ping_interval": None,
    "ping_timeout": None,
    "max_size": MAX_MESSAGE,
    "backlog": BACKLOG,
}


def websockets_handler(send_all: Callable[[set[Any], Any], Awaitable[None]]) -> Any:
    """The handler of websockets' asyncio and trio servers; ``send_all`` broadcasts."""
    from websockets.exceptions import ConnectionClosed

    listeners: set[Any] = set()

    async def handler(ws: Any) -> None:
        path = ws.request.path if ws.request is not None else ""
        try:
            if path == "/echo":
                async for message in ws:
                    await ws.send(message)
            elif path == "/broadcast":
                listeners.add(ws)
                try:
                    async for message in ws:
                        await send_all(listeners, message)
                finally:
                    listeners.discard(ws)
            else:
                await ws.close(1008, "unknown path")
        except ConnectionClosed:
            pass

    return handler


def serve_websockets_asyncio(on_listen: Announce) -> None:
    from websockets.asyncio.server import broadcast, serve

    async def send_all(listeners: set[Any], message: Any) -> None:
        broadcast(listeners, message)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        handler = websockets_handler(send_all)
        async with serve(handler, HOST, 0, **WEBSOCKETS_OPTIONS) as server:
            on_listen(int(next(iter(server.sockets)).getsockname()[1]))
            await stop.wait()

    asyncio.run(main())


def serve_websockets_sync(on_listen: Announce) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.server import ServerConnection, broadcast, serve

    listeners: set[ServerConnection] = set()
    lock = threading.Lock()

    def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        try:
            if path == "/echo":
                for message in ws:
                    ws.send(message)
            elif path == "/broadcast":
                with lock:
                    listeners.add(ws)
                try:
                    for message in ws:
                        with lock:
                            targets = list(listeners)
                        broadcast(targets, message)
                finally:
                    with lock:
                        listeners.discard(ws)
            else:
                ws.close(1008, "unknown path")
        except ConnectionClosed:
            pass

    options = {k: v for k, v in WEBSOCKETS_OPTIONS.items() if k != "backlog"}
    with serve(handler, sock=listening_socket(), **options) as server:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        on_listen(server.socket.getsockname()[1])
        server.serve_forever()


def serve_websockets_trio(on_listen: Announce) -> None:
    from functools import partial

    import trio
    from websockets.trio.server import broadcast, serve

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                handler = websockets_handler(broadcast)
                server = await nursery.start(
                    partial(serve, handler, 0, host=HOST, **WEBSOCKETS_OPTIONS)
                )
                on_listen(server.listeners[0].socket.getsockname()[1])
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def serve_aiohttp(on_listen: Announce) -> None:
    from aiohttp import WSMsgType, web

    listeners: set[web.WebSocketResponse] = set()

    def socket_of(request: web.Request) -> web.WebSocketResponse:
        return web.WebSocketResponse(
            autoping=True, heartbeat=None, compress=False, max_msg_size=MAX_MESSAGE
        )

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = socket_of(request)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def broadcast(request: web.Request) -> web.WebSocketResponse:
        ws = socket_of(request)
        await ws.prepare(request)
        listeners.add(ws)
        try:
            async for msg in ws:
                for peer in list(listeners):
                    if peer.closed:
                        continue
                    if msg.type == WSMsgType.TEXT:
                        await peer.send_str(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await peer.send_bytes(msg.data)
        finally:
            listeners.discard(ws)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/echo", echo)
        app.router.add_get("/broadcast", broadcast)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        sock = listening_socket()
        await web.SockSite(runner, sock, backlog=BACKLOG).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        on_listen(sock.getsockname()[1])
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def serve_picows(on_listen: Announce) -> None:
    from picows import (
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        ws_create_server,
    )

    # picows hands over frames; the load generator never fragments, so a frame is a message
    class Echo(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview())
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    listeners: set[WSTransport] = set()

    class Broadcast(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            listeners.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            listeners.discard(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                payload = frame.get_payload_as_bytes()
                for peer in listeners:
                    peer.send(frame.msg_type, payload)
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    routes = {b"/echo": Echo, b"/broadcast": Broadcast}

    def listener(request: WSUpgradeRequest) -> WSListener | None:
        factory = routes.get(request.path)
        return factory() if factory is not None else None

    async def main() -> None:
        server = await ws_create_server(
            listener, sock=listening_socket(), max_frame_size=MAX_MESSAGE
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        on_listen(server.sockets[0].getsockname()[1])
        await stop.wait()
        server.close()

    asyncio.run(main())


def serve_starlette(on_listen: Announce) -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    listeners: set[WebSocket] = set()

    async def messages(ws: WebSocket) -> Any:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            yield message

    async def send(ws: WebSocket, message: Any) -> None:
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        async for message in messages(ws):
            await send(ws, message)

    async def broadcast(ws: WebSocket) -> None:
        await ws.accept()
        listeners.add(ws)
        try:
            async for message in messages(ws):
                for peer in list(listeners):
                    try:
                        await send(peer, message)
                    except (WebSocketDisconnect, RuntimeError):
                        listeners.discard(peer)
        finally:
            listeners.discard(ws)

    app = Starlette(routes=[WebSocketRoute("/echo", echo), WebSocketRoute("/broadcast", broadcast)])
    serve_uvicorn(app, on_listen)


VARIANTS: dict[str, Callable[[Announce], None]] = {
    "spoc-asyncio": serve_spoc_asyncio,
    "spoc-threads": serve_spoc_threads,
    "spoc-trio": serve_spoc_trio,
    "spoc-asgi": serve_spoc_asgi,
    "websockets-asyncio": serve_websockets_asyncio,
    "websockets-sync": serve_websockets_sync,
    "websockets-trio": serve_websockets_trio,
    "aiohttp": serve_aiohttp,
    "picows": serve_picows,
    "starlette": serve_starlette,
}


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one (10,000 clients need as many)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one benchmark server")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    VARIANTS[args.variant](announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
