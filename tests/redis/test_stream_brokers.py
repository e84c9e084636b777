"""Streams on RedisBroker in this process: two stream servers (nodes), each with a
broker of its own, under the threads and asyncio adapters, with real clients over
127.0.0.1: the slow-viewer policy holds on the node without the publisher; a subscription
made again makes its viewers restart at a key frame; the media queue is bounded."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import Router, UsageError
from spoc_sockets.channels.brokers.memory import MemoryBroker
from spoc_sockets.channels.brokers.redis import RedisBroker
from spoc_sockets.channels.stream import DELTA, KEY, StreamServer
from spoc_sockets.request import Request

from ..behaviour.harness_asyncio import start as start_asyncio
from ..behaviour.harness_net import LEGACY, NetServer
from ..behaviour.harness_threads import start as start_threads
from .conftest import RedisServer
from .test_chat_nodes import TIMEOUT
from .test_stream_nodes import event, media


class OpenStream(StreamServer):
    """Anyone may publish (a test)."""

    def can_publish(self, request: Request, stream_id: str, user: object) -> bool:
        return True


Start = Callable[[Router], AbstractContextManager[NetServer]]


@contextmanager
def node(start: Start, url: str, **options: object) -> Iterator[tuple[int, RedisBroker]]:
    """A stream server with a broker of its own: its port, and its broker."""
    broker = RedisBroker(url, timeout=2.0)
    router = Router()
    router.add("/stream/{stream_id}", OpenStream(broker=broker, **options))
    try:
        with start(router) as server:
            yield server.port, broker
    finally:
        broker.close()


def viewer(port: int, small_buffer: bool = False) -> AbstractContextManager[ClientConnection]:
    """A viewer; ``small_buffer``: one that reads slowly (a small receive buffer, one
    message queued)."""
    sock = socket.socket()
    if small_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return connect(  # type: ignore[no-any-return]
        f"ws://127.0.0.1:{port}/stream/s",
        sock=sock,
        open_timeout=TIMEOUT,
        max_queue=1 if small_buffer else 16,
        max_size=None,
        **LEGACY,
    )


@pytest.mark.parametrize("start", [start_threads, start_asyncio], ids=["threads", "asyncio"])
def test_a_slow_viewer_on_another_node_drops_until_a_key_frame(
    start: Start, redis_server: RedisServer
) -> None:
    chunk = media(DELTA, b"d" * 32 * 1024)
    with (
        node(start, redis_server.url) as (port_a, _),
        node(start, redis_server.url, viewer_buffer_bytes=64 * 1024) as (port_b, _),
        ExitStack() as stack,
    ):
        slow = stack.enter_context(viewer(port_b, small_buffer=True))
        fast = stack.enter_context(viewer(port_b))
        for ws in (slow, fast):
            assert event(ws)["type"] == "viewing"
        publisher = stack.enter_context(
            connect(f"ws://127.0.0.1:{port_a}/stream/s?role=publish", open_timeout=TIMEOUT)
        )
        assert event(publisher)["type"] == "publishing"
        publisher.send(media(KEY, b"k1"))
        assert event(fast) == media(KEY, b"k1")
        for _ in range(200):  # in step with the fast viewer, which gets every one
            publisher.send(chunk)
            assert event(fast) == chunk
        publisher.send(media(KEY, b"k2"))
        assert event(fast) == media(KEY, b"k2")
        received = []
        for _ in range(300):  # the slow one: what it was sent, then told, then resumed
            received.append(event(slow))
            if received[-1] == media(KEY, b"k2"):
                break
        told = [e for e in received if isinstance(e, dict)]
        assert told[0] == {"type": "dropped", "dropped": 1}
        assert told[-1]["type"] == "resumed" and told[-1]["dropped"] > 0
        assert received[-2] == told[-1]  # it resumed at the key frame
        assert received.count(chunk) < 200  # it was sent less than the others


def test_a_subscription_made_again_restarts_its_viewers_at_a_key_frame(
    redis_server: RedisServer,
) -> None:
    with (
        node(start_threads, redis_server.url) as (port_a, _),
        node(start_threads, redis_server.url) as (port_b, broker_b),
        viewer(port_b) as ws,
        connect(f"ws://127.0.0.1:{port_a}/stream/s?role=publish", open_timeout=TIMEOUT) as pub,
    ):
        assert event(ws)["type"] == "viewing" and event(pub)["type"] == "publishing"
        pub.send(media(KEY, b"k1"))
        assert event(ws) == media(KEY, b"k1")
        client = redis.Redis.from_url(redis_server.url)
        try:  # Redis drops node B's subscription connection (as on a failover)
            client.client_kill_filter(_type="pubsub")
        finally:
            client.close()
        for _ in range(1000):  # bounded: the listener reconnects with a capped backoff
            if broker_b.reconnects:
                break
            pause.wait(0.01)
        pause.wait(1.0)  # its new subscription is confirmed
        pub.send(media(DELTA, b"d1"))  # after a gap: not decodable without a key frame
        pub.send(media(KEY, b"k2"))
        assert event(ws) == {"type": "dropped", "dropped": 1}  # told: media was missed
        assert event(ws)["type"] == "resumed"
        assert event(ws) == media(KEY, b"k2")  # d1 skipped: it restarts at the key frame


pause = threading.Event()


def test_the_stream_options_are_checked(redis_server: RedisServer) -> None:
    with pytest.raises(UsageError, match="broker is a MediaBroker or None, not"):
        OpenStream(broker=MemoryBroker())
    with pytest.raises(UsageError, match="max_pending_bytes"):
        RedisBroker(redis_server.url, max_pending_bytes="1")
