"""The chat on RedisBroker under every adapter, in this process, with the ``websockets``
client over 127.0.0.1: the broker's answers come back from its own thread through the
core's thread-safe send path; when Redis is gone, every request is answered with the
error ``unavailable`` and the connection stays usable."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import Router
from spoc_sockets.channels.brokers.redis import RedisBroker
from spoc_sockets.channels.chat import ChatServer

from ..behaviour.harness_asgi import start as start_asgi
from ..behaviour.harness_asyncio import start as start_asyncio
from ..behaviour.harness_net import LEGACY, NetServer
from ..behaviour.harness_threads import start as start_threads
from ..behaviour.harness_trio import start as start_trio
from .conftest import RedisServer
from .test_chat_nodes import TIMEOUT, receive, request

Start = Callable[[Router], AbstractContextManager[NetServer]]


@contextmanager
def chat_on_redis(start: Start, redis_server: RedisServer) -> Iterator[ClientConnection]:
    broker = RedisBroker(redis_server.url, timeout=2.0)
    router = Router()
    router.add("/chat", ChatServer(broker=broker, trust_user_param=True))
    try:
        with start(router) as server, connect(
            f"ws://127.0.0.1:{server.port}/chat?user=ada", open_timeout=TIMEOUT, **LEGACY
        ) as ws:  # fmt: skip
            assert receive(ws) == {"type": "welcome", "user": "ada"}
            yield ws
    finally:
        broker.close()


@pytest.mark.parametrize(
    "start",
    [start_asyncio, start_trio, start_threads, start_asgi],
    ids=["asyncio", "trio", "threads", "asgi"],
)
def test_every_request_is_answered_whether_redis_is_there_or_not(
    start: Start, redis_server: RedisServer
) -> None:
    with chat_on_redis(start, redis_server) as ada:
        joined = request(ada, "joined", type="join", room="r")
        assert (joined["members"], joined["history"], joined["complete"]) == (["ada"], [], True)
        first = request(ada, "message", type="post", room="r", text="one", ref=1)
        assert (first["text"], first["ref"]) == ("one", 1)
        request(ada, "message", type="post", room="r", text="two", ref=2)
        page = request(ada, "history", type="history", room="r", since=first["id"])
        assert [m["text"] for m in page["history"]] == ["two"] and page["complete"] is True
        assert request(ada, "members", type="who", room="r")["members"] == ["ada"]
        redis_server.kill()
        for message in (
            {"type": "post", "room": "r", "text": "three", "ref": 3},
            {"type": "who", "room": "r", "ref": 4},
            {"type": "history", "room": "r", "since": 0, "ref": 5},
            {"type": "join", "room": "elsewhere", "ref": 6},
        ):
            error = request(ada, "never", **message)
            assert (error["code"], error["ref"]) == ("unavailable", message["ref"])
        redis_server.start()  # from its append-only file
        pause = threading.Event()
        for _ in range(200):  # bounded: the broker reconnects with a capped backoff
            answer = request(ada, "joined", type="join", room="elsewhere")
            if answer["type"] == "joined":
                break
            assert answer["code"] == "unavailable"  # refused: not joined, so it may try again
            pause.wait(0.05)
        assert answer["type"] == "joined"
        resumed = request(ada, "history", type="history", room="r", since=0)
        assert [m["text"] for m in resumed["history"]] == ["one", "two"]  # "three": not stored


def test_a_notification_reaches_the_user(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    router = Router()
    chat = router.add("/chat", ChatServer(broker=broker, trust_user_param=True))
    try:
        with start_threads(router) as server, connect(
            f"ws://127.0.0.1:{server.port}/chat?user=bob", open_timeout=TIMEOUT, **LEGACY
        ) as bob:  # fmt: skip
            assert receive(bob)["type"] == "welcome"
            request(bob, "joined", type="join", room="r")  # subscribed to user:bob before r
            chat.notify("bob", {"grade": "A"})
            events = iter(lambda: receive(bob), None)
            notification = next(event for event in events if event["type"] == "notification")
            assert notification == {"type": "notification", "payload": {"grade": "A"}}
    finally:
        broker.close()
