"""The Broker seam's contract, checked on every broker: the in-process MemoryBroker and
RedisBroker on a real redis-server."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from spoc_sockets import UsageError
from spoc_sockets.channels.brokers import (
    Broker,
    BrokerUnavailable,
    HistoryPage,
    Kept,
    RoomsFull,
)
from spoc_sockets.channels.brokers import redis as redis_broker_module
from spoc_sockets.channels.brokers.memory import MemoryBroker
from spoc_sockets.channels.brokers.redis import RedisBroker

from ..test_chat import WAIT, Result
from .conftest import RedisServer


class Events:
    """A ``deliver`` callback keeping what it gets, for bounded waits."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, str]] = queue.Queue()

    def __call__(self, topic: str, event: str) -> None:
        self.queue.put((topic, event))

    def take(self, count: int) -> list[tuple[str, Any]]:
        return [self._one() for _ in range(count)]

    def _one(self) -> tuple[str, Any]:
        try:
            topic, event = self.queue.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("an event never came") from None
        return topic, json.loads(event)

    def take_until_marker(self, broker: Broker, topic: str) -> list[tuple[str, Any]]:
        """Every event until a marker published now on ``topic``: what was delivered
        twice shows here."""
        broker.publish(topic, '{"type":"marker"}')
        events = []
        while (event := self._one())[1] != {"type": "marker"}:
            events.append(event)
        return events


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "memory":
        yield MemoryBroker()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_broker = RedisBroker(server.url)
    try:
        yield redis_broker
    finally:
        redis_broker.close()


def attached(broker: Broker, *topics: str) -> Events:
    """An ``Events`` attached to ``broker``, subscribed to ``topics`` before the broker
    starts (Redis subscribes to them at once: a publication on one before would be lost)."""
    events = Events()
    for topic in topics:
        broker.subscribe(topic)
    broker.attach(events)
    return events


def join(broker: Broker, room: str, user: str, max_rooms: int = 100) -> bool:
    broker.join(room, user, max_rooms, first := Result[bool]())
    return first.value  # once answered, the room's subscription is in place


def post(broker: Broker, room: str, text: str, **bounds: int) -> dict[str, Any]:
    message = json.dumps({"type": "message", "room": room, "text": text})
    limits = {"max_messages": 100, "max_bytes": 100_000, **bounds}
    broker.post(room, message, limits["max_messages"], limits["max_bytes"], stored := Result[str]())
    return json.loads(stored.value)  # type: ignore[no-any-return]


def history(broker: Broker, room: str, since: int | None, count: int = 100,
            max_bytes: int = 100_000) -> HistoryPage:  # fmt: skip
    broker.history(room, since, count, max_bytes, page := Result[HistoryPage]())
    return page.value


def texts(page: HistoryPage) -> list[str]:
    return [json.loads(message)["text"] for message in page.messages]


def test_posts_get_dense_increasing_ids_per_room_and_reach_subscribers_once(
    broker: Broker,
) -> None:
    events = attached(broker, "room:a", "room:b")
    join(broker, "a", "ada")
    join(broker, "b", "ada")
    stored = [post(broker, room, f"{room}{n}") for n in range(5) for room in ("a", "b")]
    ids = {room: [m["id"] for m in stored if m["room"] == room] for room in ("a", "b")}
    for room_ids in ids.values():
        assert room_ids == list(range(room_ids[0], room_ids[0] + 5))
    assert stored[0] == {"type": "message", "room": "a", "text": "a0", "id": ids["a"][0]}
    delivered = events.take_until_marker(broker, "room:a") + events.take_until_marker(
        broker, "room:b"
    )
    for room in ("a", "b"):
        mine = [event for topic, event in delivered if topic == f"room:{room}"]
        assert mine == [m for m in stored if m["room"] == room]  # each once, in id order


def test_only_subscribed_topics_are_delivered(broker: Broker) -> None:
    events = attached(broker, "room:a", "user:ada")
    join(broker, "a", "ada")
    broker.unsubscribe("room:a")
    broker.publish("user:bob", '{"type":"notification","payload":1}')
    broker.publish("user:ada", '{"type":"notification","payload":2}')
    assert events.take_until_marker(broker, "user:ada") == [
        ("user:ada", {"type": "notification", "payload": 2})
    ]


def test_history_pages_resume_after_since_and_say_what_was_lost(broker: Broker) -> None:
    attached(broker)
    join(broker, "r", "ada")
    ids = [post(broker, "r", f"m{n}", max_messages=5)["id"] for n in range(8)]
    assert texts(history(broker, "r", None, count=3)) == ["m5", "m6", "m7"]
    assert history(broker, "r", None, count=0) == HistoryPage([])  # replay_messages=0: none
    page = history(broker, "r", ids[4], count=2)  # m5, m6: kept, and one more after
    assert (texts(page), page.complete, page.more) == (["m5", "m6"], True, True)
    page = history(broker, "r", ids[6])
    assert (texts(page), page.complete, page.more) == (["m7"], True, False)
    page = history(broker, "r", ids[1])  # m2 was trimmed (5 kept): not complete
    assert (texts(page), page.complete) == (["m3", "m4", "m5", "m6", "m7"], False)
    page = history(broker, "r", ids[7] + 1000)  # an id this room never gave
    assert (texts(page), page.complete) == (["m3", "m4", "m5", "m6", "m7"], False)


def test_history_is_bounded_in_bytes_but_the_newest_is_kept(broker: Broker) -> None:
    attached(broker)
    join(broker, "r", "ada")
    first = post(broker, "r", "é" * 100, max_bytes=500)["id"]  # 200 bytes of text in UTF-8
    for n in range(4):
        post(broker, "r", f"{n}" * 150, max_bytes=500)
    assert texts(history(broker, "r", None)) == ["2" * 150, "3" * 150]
    page = history(broker, "r", first - 1, max_bytes=200)  # one page, at least one message
    assert (texts(page), page.complete, page.more) == (["2" * 150], False, True)
    post(broker, "r", "x" * 2000, max_bytes=500)
    assert texts(history(broker, "r", None)) == ["x" * 2000]


def test_history_of_a_room_never_posted_to(broker: Broker) -> None:
    attached(broker)
    assert history(broker, "quiet", None) == HistoryPage([])
    assert history(broker, "quiet", 0) == HistoryPage([], complete=True)


def test_membership_counts_connections_per_user(broker: Broker) -> None:
    attached(broker)
    assert join(broker, "r", "bob") is True
    assert join(broker, "r", "ada") is True
    assert join(broker, "r", "ada") is False  # a second connection of ada
    broker.members("r", members := Result[list[str]]())
    assert members.value == ["ada", "bob"]
    assert broker.room_count() == 1
    broker.leave("r", "ada", 0.0, first_leave := Result[bool]())
    broker.leave("r", "ada", 0.0, last_leave := Result[bool]())
    broker.leave("r", "ada", 0.0, extra := Result[bool]())  # never more leaves than joins
    assert (first_leave.value, last_leave.value, extra.value) == (False, True, False)
    broker.members("r", members := Result[list[str]]())
    assert members.value == ["bob"]


def test_subscriptions_are_counted_for_channels_sharing_a_broker(broker: Broker) -> None:
    events = attached(broker, "room:r", "room:r")  # two chats, each with a member in r
    join(broker, "r", "ada")
    broker.unsubscribe("room:r")  # one of them no more: the other still gets r's events
    assert post(broker, "r", "one")["text"] == "one"
    assert [event["text"] for _, event in events.take(1)] == ["one"]
    broker.unsubscribe("room:r")  # the last one
    broker.subscribe("room:q")
    join(broker, "q", "bob")  # once Redis confirmed q, it had stopped r
    post(broker, "r", "two")
    assert events.take_until_marker(broker, "room:q") == []


def test_a_new_room_past_max_rooms_is_refused(broker: Broker) -> None:
    attached(broker)
    join(broker, "a", "ada", max_rooms=1)
    broker.join("b", "ada", 1, refused := Result[bool]())
    assert isinstance(refused.error, RoomsFull)
    assert join(broker, "a", "bob", max_rooms=1) is True  # an existing room still takes members


# -- RedisBroker only: its options, its Redis, its faults -----------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("url", 5),
        ("prefix", "a{b}"),
        ("prefix", ""),
        ("history_ttl", 0),
        ("presence_ttl", "30"),
        ("max_pending", 1.5),
        ("max_pending", True),
        ("timeout", float("nan")),
        ("probe_interval", 0),
        ("probe_interval", "5s"),
        ("probe_interval", float("inf")),
    ],
)
def test_bad_redis_broker_options_are_refused_by_name(option: str, value: object) -> None:
    options: dict[str, Any] = {"url": "redis://127.0.0.1:1/0", option: value}
    with pytest.raises(UsageError, match=option):
        RedisBroker(**options)


def test_a_history_reset_is_detected_by_the_epoch(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        attached(broker)
        join(broker, "r", "ada")
        seen = post(broker, "r", "before")["id"]
        redis.Redis.from_url(redis_server.url).flushall()  # Redis lost everything
        after = [post(broker, "r", f"after{n}")["id"] for n in range(3)]
        assert after[0] > seen  # ids never restart: a new epoch starts past the old ids
        page = history(broker, "r", seen)
        assert (texts(page), page.complete) == (["after0", "after1", "after2"], False)
        page = history(broker, "r", after[0])
        assert (texts(page), page.complete) == (["after1", "after2"], True)
    finally:
        broker.close()


def test_keys_of_a_room_share_one_hash_slot(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        attached(broker)
        join(broker, "lobby}{x", "ada")
        post(broker, "lobby}{x", "hi")
        client = redis.Redis.from_url(redis_server.url)
        keys = client.keys("spoc:*")
        assert len(keys) == 4 and len({key_slot(key) for key in keys}) == 1  # Cluster's rule
    finally:
        broker.close()


def test_a_new_subscription_is_made_at_once_not_at_the_listeners_next_look(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker_module, "LISTEN_INTERVAL", 3600.0)  # it never looks
    broker = RedisBroker(redis_server.url)
    try:
        attached(broker, "room:a")
        join(broker, "a", "ada")  # subscribed when the listener started
        broker.subscribe("room:b")  # while the listener waits for an event
        assert join(broker, "b", "ada") is True  # not "not subscribed" after 5 s: woken
        assert post(broker, "b", "hi")["text"] == "hi"
    finally:
        broker.close()


def test_keys_of_a_stream_share_one_hash_slot(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        broker.attach_media(lambda stream, media: None)
        broker.claim("s}{x", claimed := Result[bool]())
        assert claimed.value is True
        for media in (b"\x00init", b"\x01key"):
            broker.publish_media("s}{x", media, keep=True)
        broker.kept("s}{x", kept := Result[Kept]())
        assert kept.value == Kept(True, b"\x00init", b"\x01key")
        keys = redis.Redis.from_url(redis_server.url).keys("spoc:*")
        assert len(keys) == 3 and len({key_slot(key) for key in keys}) == 1
    finally:
        broker.close()


def test_scripts_run_by_sha_and_again_whole_after_redis_forgot_them(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        attached(broker)
        join(broker, "r", "ada")
        first = post(broker, "r", "one")["id"]
        client = redis.Redis.from_url(redis_server.url)
        calls = client.info("commandstats")
        assert calls["cmdstat_evalsha"]["calls"] >= 2 and "cmdstat_eval" not in calls
        client.script_flush()
        assert post(broker, "r", "two")["id"] == first + 1  # once: not stored twice
        assert texts(history(broker, "r", first - 1)) == ["one", "two"]
        assert post(broker, "r", "three")["id"] == first + 2
        assert client.info("commandstats")["cmdstat_eval"]["calls"] == 1  # loaded again
    finally:
        broker.close()


def test_a_post_redis_did_not_store_fails_and_later_posts_succeed(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url, timeout=2.0)
    try:
        attached(broker)
        join(broker, "r", "ada")
        first = post(broker, "r", "stored")["id"]
        redis_server.kill()
        message = json.dumps({"type": "message", "room": "r", "text": "lost"})
        broker.post("r", message, 100, 100_000, refused := Result[str]())
        assert isinstance(refused.error, BrokerUnavailable)
        redis_server.start()  # from its append-only file
        stored = None
        for _ in range(100):  # bounded: the broker reconnects with a capped backoff
            again = message.replace("lost", "again")
            broker.post("r", again, 100, 100_000, result := Result[str]())
            if result.error is None:
                stored = json.loads(result.value)
                break
        assert stored is not None and stored["id"] == first + 1  # the refused post took no id
        assert texts(history(broker, "r", first - 1)) == ["stored", "again"]
    finally:
        broker.close()


def test_each_process_writes_its_members_again_after_redis_lost_them(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url, presence_ttl=1.0)  # refreshed every third of it
    try:
        attached(broker)
        join(broker, "r", "ada")
        redis.Redis.from_url(redis_server.url).flushall()
        pause = threading.Event()
        for _ in range(400):  # bounded: 20 s
            broker.members("r", members := Result[list[str]]())
            if members.value == ["ada"]:
                break
            pause.wait(0.05)
        assert members.value == ["ada"]
    finally:
        broker.close()


def test_past_max_pending_operations_fail_at_once_and_publications_are_counted(
    redis_server: RedisServer,
) -> None:
    broker = RedisBroker(redis_server.url, max_pending=2)
    try:  # not attached yet: its threads have not started, so nothing is taken off the queue
        message = '{"type":"message","room":"r","text":"x"}'
        waiting = [Result[str](), Result[str]()]
        for done in waiting:
            broker.post("r", message, 10, 10_000, done)
        broker.post("r", message, 10, 10_000, refused := Result[str]())
        assert isinstance(refused.error, BrokerUnavailable)  # answered before any wait
        broker.publish("user:ada", '{"type":"notification","payload":1}')
        assert broker.dropped == 1
        broker.attach(Events())
        assert [json.loads(done.value)["text"] for done in waiting] == ["x", "x"]
    finally:
        broker.close()
    broker.post("r", message, 10, 10_000, closed := Result[str]())
    assert isinstance(closed.error, BrokerUnavailable)


def test_an_error_reply_fails_that_operation_only(redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url)
    try:
        attached(broker)
        redis.Redis.from_url(redis_server.url).set("spoc:{r}:meta", "not a hash")
        message = '{"type":"message","room":"r","text":"x"}'
        broker.post("r", message, 10, 10_000, refused := Result[str]())
        broker.post("s", message, 10, 10_000, stored := Result[str]())  # goes through
        assert isinstance(refused.error, BrokerUnavailable)
        assert json.loads(stored.value)["text"] == "x"
    finally:
        broker.close()


def test_messages_posted_while_the_subscription_was_down_are_repaired_once_in_order(
    redis_server: RedisServer,
) -> None:
    node_a, node_b = RedisBroker(redis_server.url), RedisBroker(redis_server.url)
    try:
        events = attached(node_a, "room:r")
        join(node_a, "r", "ada")  # the subscription is in place
        attached(node_b)
        post(node_b, "r", "m1")
        assert [event["text"] for _, event in events.take(1)] == ["m1"]
        client = redis.Redis.from_url(redis_server.url)
        client.client_kill_filter(_type="pubsub")  # node A's subscription connection drops
        for n in (2, 3, 4):  # while node A connects again (after a backoff of 25 ms or more)
            post(node_b, "r", f"m{n}")
        got = events.take(4)  # the three, and what could not be repaired: presence
        post(node_b, "r", "m5")  # after: a duplicate would show before it
        got += events.take(1)
        told = {"type": "missed", "what": ["presence"], "room": "r", "members": ["ada"]}
        assert [event for _, event in got if event["type"] == "missed"] == [told]
        texts = [event["text"] for _, event in got if event["type"] == "message"]
        assert texts == ["m2", "m3", "m4", "m5"] and node_a.reconnects == 1
    finally:
        node_a.close()
        node_b.close()


def test_after_a_subscription_outage_what_could_not_be_repaired_is_told(
    redis_server: RedisServer,
) -> None:
    node_a, node_b = RedisBroker(redis_server.url), RedisBroker(redis_server.url)
    try:
        events = attached(node_a, "room:r", "user:ada")
        join(node_a, "r", "ada")
        attached(node_b)
        post(node_b, "r", "m1")
        assert [event["text"] for _, event in events.take(1)] == ["m1"]
        client = redis.Redis.from_url(redis_server.url)
        client.client_kill_filter(_type="pubsub")
        join(node_b, "r", "bob")  # while node A hears nothing: it is given the members
        for n in range(2, 6):  # the room keeps 2: m2 and m3 are lost to node A
            post(node_b, "r", f"m{n}", max_messages=2)
        got = events.take(4)  # m4, m5 (repaired or not), and two missed events
        missed = sorted((topic, event) for topic, event in got if event["type"] == "missed")
        assert missed == [
            ("room:r", {"type": "missed", "what": ["messages", "presence"], "room": "r",
                        "members": ["ada", "bob"]}),
            ("user:ada", {"type": "missed", "what": ["notifications"]}),
        ]  # fmt: skip
        texts = [event["text"] for _, event in got if event["type"] == "message"]
        assert texts == ["m4", "m5"]
    finally:
        node_a.close()
        node_b.close()
