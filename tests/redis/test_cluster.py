"""RedisBroker and Publisher on a real Redis Cluster of three masters (started by the
tests): each script touches one slot, rooms and streams on every master work, and
messages, media and notifications cross between brokers connected to different nodes."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

from spoc_sockets.channels.brokers import Kept
from spoc_sockets.channels.brokers.redis import Publisher, RedisBroker

from ..test_chat import WAIT, Result
from .conftest import RedisCluster
from .test_brokers import attached, history, join, post, texts


def masters(cluster: RedisCluster) -> dict[int, int]:
    """slot -> the port of the master that serves it."""
    client = redis.Redis("127.0.0.1", cluster.ports[0], decode_responses=True)
    try:
        owner = {}
        for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            for slot in range(int(start), int(end) + 1):
                owner[slot] = int(master[1])
        return owner
    finally:
        client.close()


@pytest.fixture
def brokers(redis_cluster: RedisCluster) -> Iterator[tuple[RedisBroker, RedisBroker]]:
    """Two brokers (nodes), each given the URL of another master."""
    first, second = (
        RedisBroker(f"redis://127.0.0.1:{port}/0", timeout=2.0) for port in redis_cluster.ports[:2]
    )
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_rooms_on_every_master_cross_between_brokers(
    redis_cluster: RedisCluster, brokers: tuple[RedisBroker, RedisBroker]
) -> None:
    owner = masters(redis_cluster)
    rooms = [f"room{n}" for n in range(12)]
    served = {owner[key_slot(f"spoc:{{{room}}}:log".encode())] for room in rooms}
    assert served == set(redis_cluster.ports)  # the rooms live on all three masters
    first, second = brokers
    events = attached(first, *(f"room:{room}" for room in rooms), "user:ada")
    attached(second)
    for room in rooms:
        join(first, room, "ada")
        assert join(second, room, "bob") is True
        stored = post(second, room, f"hello {room}")
        assert stored["text"] == f"hello {room}"
        got = [(topic, event) for topic, event in events.take(1)]
        assert got == [(f"room:{room}", stored)]  # from the other node, through the cluster
        assert texts(history(first, room, None)) == [f"hello {room}"]
        second.members(room, members := Result[list[str]]())
        assert members.value == ["ada", "bob"]
    second.publish("user:ada", '{"type":"notification","payload":1}')
    assert events.take(1) == [("user:ada", {"type": "notification", "payload": 1})]
    client = redis.RedisCluster("127.0.0.1", redis_cluster.ports[0])
    try:  # every key of a room in one slot: Cluster would refuse a script otherwise
        keys = [key for key in client.keys("spoc:*", target_nodes="all")]
        slots = {}
        for key in keys:
            slots.setdefault(key.decode().split("}")[0], set()).add(key_slot(key))
        assert len(slots) == len(rooms) and all(len(s) == 1 for s in slots.values())
    finally:
        client.close()


def test_a_stream_and_a_publisher_on_a_cluster(
    redis_cluster: RedisCluster, brokers: tuple[RedisBroker, RedisBroker]
) -> None:
    first, second = brokers
    media_got: queue.Queue[tuple[str, bytes | None]] = queue.Queue()
    first.attach_media(lambda stream, media: media_got.put((stream, media)))
    events = attached(first)
    second.attach_media(lambda stream, media: None)
    first.subscribe("stream:s")
    first.kept("s", before := Result[Kept]())  # once answered, the subscription is in place
    assert before.value == Kept(False)
    second.claim("s", claimed := Result[bool]())
    assert claimed.value is True
    first.claim("s", refused := Result[bool]())
    assert refused.value is False  # one publisher per stream, whichever node asks
    sent = [b"\x00init", b"\x01key", b"\x02delta"]
    for media in sent:
        second.publish_media("s", media, keep=media[0] < 2)
    second.kept("s", kept := Result[Kept]())
    assert kept.value == Kept(True, b"\x00init", b"\x01key")
    second.release("s")
    got = [media_got.get(timeout=WAIT) for _ in range(4)]
    assert got == [("s", media) for media in [*sent, b""]]  # raw bytes, then the end
    first.subscribe("room:r")
    join(first, "r", "ada")
    with Publisher(f"redis://127.0.0.1:{redis_cluster.ports[2]}/0") as publisher:
        message_id = publisher.post("r", "bot", "from a view")
    topic, event = events.take(1)[0]
    assert (topic, event["id"], event["text"]) == ("room:r", message_id, "from a view")
