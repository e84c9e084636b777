"""``reuse_port=True``: several servers (processes, in production) listen on one port."""

from __future__ import annotations

import asyncio
import threading
from functools import partial

import trio
from websockets.sync.client import connect

from spoc_sockets import ChannelServer, Connection, Router
from spoc_sockets import asyncio as spoc_asyncio
from spoc_sockets import threads as spoc_threads
from spoc_sockets import trio as spoc_trio

from .behaviour.harness_net import LEGACY


class Echo(ChannelServer):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def router() -> Router:
    r = Router()
    r.add("/echo", Echo())
    return r


def echo(port: int) -> str | bytes:
    with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10, **LEGACY) as ws:
        ws.send("hi")
        return ws.recv(timeout=10)


def test_threads_servers_share_a_port() -> None:
    first = spoc_threads.serve(router(), "127.0.0.1", 0, reuse_port=True)
    second = spoc_threads.serve(router(), "127.0.0.1", first.port, reuse_port=True)
    with first, second:
        for server in (first, second):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        assert second.port == first.port
        assert echo(first.port) == "hi"  # whichever of the two the kernel picks


def test_asyncio_servers_share_a_port() -> None:
    async def main() -> None:
        async with spoc_asyncio.serve(router(), "127.0.0.1", 0, reuse_port=True) as first:
            port = first.port
            async with spoc_asyncio.serve(router(), "127.0.0.1", port, reuse_port=True):
                assert await asyncio.to_thread(echo, port) == "hi"

    asyncio.run(main())


def test_trio_servers_share_a_port() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            serve = partial(spoc_trio.serve, reuse_port=True)
            first = await nursery.start(serve, router(), "127.0.0.1", 0)
            await nursery.start(serve, router(), "127.0.0.1", first.port)
            assert await trio.to_thread.run_sync(echo, first.port) == "hi"
            nursery.cancel_scope.cancel()

    trio.run(main)
