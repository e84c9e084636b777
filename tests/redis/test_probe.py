"""The liveness probe of the subscription connection: a connection to Redis that goes
silent (its socket open, nothing crossing it, as when a failover or a network drops
packets without a word) is found dead, made again, and what it missed is repaired."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from spoc_sockets.channels.brokers.redis import Publisher, RedisBroker

from .conftest import RedisServer
from .test_brokers import attached, join

POLL = 0.05  # seconds a relay thread waits for data before it looks at its state again


class FreezingProxy:
    """A TCP relay on 127.0.0.1 to a Redis: :meth:`freeze` makes every connection open
    now silent (nothing more crosses it either way; its sockets stay open); connections
    made later work."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.count = 0  # connections accepted
        self.frozen_below = 0  # connections numbered below this are frozen
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen_below = self.count

    def close(self) -> None:
        self.closed = True
        for sock in [self.listener, *self.sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            self.sockets += [client, upstream]
            number, self.count = self.count, self.count + 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._relay, args=(source, sink, number), daemon=True
                ).start()

    def _relay(self, source: socket.socket, sink: socket.socket, number: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            while not self.closed:
                readable, _, _ = select.select([source], [], [], POLL)
                if number < self.frozen_below or not readable:
                    continue  # frozen: what arrives stays unread
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)


def test_a_silent_subscription_is_found_dead_made_again_and_repaired(
    redis_server: RedisServer,
) -> None:
    proxy = FreezingProxy(redis_server.port)
    node = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0", timeout=1.0, probe_interval=0.2)
    try:
        events = attached(node, "room:r")
        join(node, "r", "ada")  # the subscription is in place
        with Publisher(redis_server.url) as publisher:  # straight to Redis
            publisher.post("r", "bot", "m1")
            texts = [event["text"] for _, event in events.take(1)]
            proxy.freeze()  # the node's connections go silent; its sockets stay open
            publisher.post("r", "bot", "m2")
            publisher.post("r", "bot", "m3")
            got = events.take(3)  # m2, m3 and the missed presence events
            publisher.post("r", "bot", "m4")  # after: a duplicate would show before it
            got += events.take(1)
            texts += [event["text"] for _, event in got if event["type"] == "message"]
        assert texts == ["m1", "m2", "m3", "m4"]
        assert [event["what"] for _, event in got if event["type"] == "missed"] == [["presence"]]
        assert node.reconnects >= 1 and node.repaired >= 2
    finally:
        node.close()
        proxy.close()
