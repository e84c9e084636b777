"""``async def`` hooks: awaited by every server that runs coroutines, in order."""

from __future__ import annotations

import asyncio

import pytest
import sniffio
import trio

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router, UsageError
from spoc_sockets.threads import serve as serve_threads

from .harness import Closed, Harness, Rejected


async def pause(turns: int = 1) -> None:
    """Give the event loop of whichever library runs us a few turns."""
    for _ in range(turns):
        if sniffio.current_async_library() == "trio":
            await trio.sleep(0)
        else:
            await asyncio.sleep(0)


class AsyncChannel(ChannelServer):
    ping_interval = None

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[int] = []

    async def authenticate(self, request: Request) -> object:
        await pause()
        token = request.query.get("token")
        if token != "good":
            raise Reject(401, "bad token")
        return {"name": "ada"}

    async def on_connect(self, conn: Connection) -> None:
        await pause(3)
        conn.send(f"hello {conn.user['name']}")  # type: ignore[index]

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("secret")
        await pause(int(str(message)) % 4 if str(message).isdigit() else 1)
        conn.send(message)

    async def on_close(self, conn: Connection, code: int, reason: str) -> None:
        await pause()
        self.closed.append(code)


def make_router() -> tuple[Router, AsyncChannel]:
    channel = AsyncChannel()
    router = Router()
    router.add("/a", channel)
    return router, channel


def test_async_authenticate_refuses_and_accepts(serve_async: Harness) -> None:
    router, _ = make_router()
    with serve_async(router) as served:
        with pytest.raises(Rejected) as refused:
            served.connect("/a?token=bad")
        assert refused.value.status == 401
        assert not router.upgraded
        client = served.connect("/a?token=good")
        assert client.receive() == "hello ada"  # on_connect ran, with conn.user
        client.close()


def test_messages_are_handled_in_order_after_on_connect(serve_async: Harness) -> None:
    router, channel = make_router()
    with serve_async(router) as served:
        client = served.connect("/a?token=good")
        for i in range(20):  # sent before on_connect is done
            client.send(str(i))
        assert client.receive() == "hello ada"
        assert [client.receive() for _ in range(20)] == [str(i) for i in range(20)]
        client.close()
        served.wait_for(lambda: channel.closed == [1000])


def test_an_async_hook_that_raises_closes_with_1011(serve_async: Harness) -> None:
    router, _ = make_router()
    with serve_async(router) as served:
        client = served.connect("/a?token=good")
        assert client.receive() == "hello ada"
        client.send("boom")
        with pytest.raises(Closed):
            client.receive()
        assert client.close_code == 1011
        served.wait_for(lambda: not router.upgraded)


def test_the_threads_adapter_refuses_async_hooks_at_start() -> None:
    router, _ = make_router()
    with pytest.raises(UsageError, match=r"AsyncChannel\.authenticate is async def"):
        serve_threads(router, "127.0.0.1", 0)


def test_a_router_served_by_threads_refuses_async_channels_added_later() -> None:
    router = Router()
    with serve_threads(router, "127.0.0.1", 0), pytest.raises(UsageError, match="async def"):
        router.add("/a", AsyncChannel())
