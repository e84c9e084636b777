"""A viewer that never reads, over a real socket, while the publisher sends 100 MiB."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from websockets.sync.client import connect

from spoc_sockets import Connection, Router
from spoc_sockets.channels.stream import DELTA, KEY, StreamServer
from spoc_sockets.node_compat import create_chat_server, setup_websocket_handlers

from .behaviour.harness_asgi import start as start_asgi
from .behaviour.harness_asyncio import start as start_asyncio
from .behaviour.harness_net import LEGACY, NetServer
from .behaviour.harness_threads import start as start_threads
from .behaviour.harness_trio import start as start_trio
from .frames import upgrade_request

CHUNK = 64 * 1024
TOTAL = 100 * 2**20
BOUND = 1 * 2**20


class Watched(StreamServer):
    """Records the largest output queued for any viewer after each relay."""

    def __init__(self) -> None:
        super().__init__(viewer_buffer_bytes=BOUND, max_buffered_amount=2 * BOUND)
        self.peak = 0

    def can_publish(self, request: object, stream_id: str, user: object) -> bool:
        return True

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        super().on_message(conn, message)
        for viewer in self.clients:
            self.peak = max(self.peak, viewer.buffered_amount)


@pytest.mark.parametrize(
    "start",
    [start_asyncio, start_trio, start_threads, start_asgi],
    ids=["asyncio", "trio", "threads", "asgi"],
)
def test_never_reading_viewer_stays_bounded_and_slows_nobody(
    start: Callable[[Router], AbstractContextManager[NetServer]],
) -> None:
    stream = Watched()
    router = setup_websocket_handlers(create_chat_server(), stream)
    with start(router) as server:
        url = f"ws://127.0.0.1:{server.port}/stream/load"
        stuck = socket.create_connection(("127.0.0.1", server.port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(upgrade_request("/stream/load"))  # and never reads again
        fast = connect(url, max_size=None, **LEGACY)
        fast.recv(timeout=10)  # "viewing"
        received = [0]
        window = threading.Semaphore(8)  # the publisher runs at most 8 chunks ahead

        def read_all() -> None:
            while received[0] < TOTAL:
                received[0] += len(fast.recv(timeout=30))
                window.release()

        reader = threading.Thread(target=read_all)
        reader.start()
        with connect(url + "?role=publish", max_size=None, **LEGACY) as publisher:
            publisher.recv(timeout=10)  # "publishing"
            body = bytes(CHUNK - 1)
            for i in range(TOTAL // CHUNK):
                assert window.acquire(timeout=30), "the reading viewer stalled"
                publisher.send(bytes([KEY if i % 32 == 0 else DELTA]) + body)
            reader.join(timeout=120)
            stats = stream.stats("load")
        assert received[0] == TOTAL  # the reading viewer got every byte, at its own pace
        assert stats.bytes_in == TOTAL
        assert stats.drops > 1000  # the stuck viewer lost most of it...
        assert stream.peak <= BOUND + CHUNK  # ...and never held more than its bound
        fast.close()
        stuck.close()
