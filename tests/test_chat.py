"""ChatServer: every message type and every error of the protocol (docs/chat-protocol.rst)."""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

import pytest

from spoc_sockets import Connection, Router
from spoc_sockets.channels.brokers.memory import MemoryBroker
from spoc_sockets.channels.chat import ChatServer, TokenBucket
from spoc_sockets.testing import ConnectionClosed, TestClient, WebSocket

T = TypeVar("T")
WAIT = 20.0  # seconds a test waits for a broker at most


class Result(Generic[T]):
    """A broker's ``done`` callback that keeps the result: ``value`` waits for it (bounded)
    and raises the exception the operation failed with."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._result: T | Exception | None = None

    def __call__(self, result: T | Exception) -> None:
        assert not self._ready.is_set(), "done is called once"
        self._result = result
        self._ready.set()

    @property
    def error(self) -> Exception | None:
        assert self._ready.wait(WAIT), "the broker never answered"
        return self._result if isinstance(self._result, Exception) else None

    @property
    def value(self) -> T:
        assert self._ready.wait(WAIT), "the broker never answered"
        if isinstance(self._result, Exception):
            raise self._result
        return self._result  # type: ignore[return-value]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def setup(**options: Any) -> tuple[Router, ChatServer, Clock]:
    clock = Clock()
    router = Router()
    options = {"clock": clock, "monotonic_clock": clock, **options}  # one clock moves both
    chat = router.add("/chat", ChatServer(trust_user_param=True, **options))
    return router, chat, clock


def connect(client: TestClient, user: str) -> WebSocket:
    ws = client.connect(f"/chat?user={user}")
    assert ws.receive_json() == {"type": "welcome", "user": user}
    return ws


def join(ws: WebSocket, room: str, **extra: Any) -> dict[str, Any]:
    ws.send_json({"type": "join", "room": room, **extra})
    reply = ws.receive_json()
    assert reply["type"] == "joined"
    ws.receive_all()  # presence events
    return reply  # type: ignore[no-any-return]


def test_join_post_presence_and_leave() -> None:
    router, _, clock = setup()
    with TestClient(router) as client:
        ada, bob = connect(client, "ada"), connect(client, "bob")
        assert join(ada, "r")["members"] == ["ada"]
        bob.send_json({"type": "join", "room": "r"})
        assert bob.receive_json()["members"] == ["ada", "bob"]
        assert ada.receive_json() == {
            "type": "presence", "room": "r", "user": "bob", "event": "joined"
        }  # fmt: skip
        bob.receive_all()
        ada.send_json({"type": "post", "room": "r", "text": "hi", "ref": "c1"})
        expected = {"type": "message", "room": "r", "user": "ada", "text": "hi",
                    "ts": clock.now, "ref": "c1", "id": 1}  # fmt: skip
        assert ada.receive_json() == expected
        assert bob.receive_json() == expected
        bob.send_json({"type": "who", "room": "r"})
        assert bob.receive_json() == {"type": "members", "room": "r", "members": ["ada", "bob"]}
        bob.send_json({"type": "leave", "room": "r"})
        assert bob.receive_json() == {"type": "left", "room": "r"}
        assert ada.receive_json()["event"] == "left"


def test_ids_are_ordered_per_room() -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "a")
        join(ada, "b")
        for room in ("a", "b", "a"):
            ada.send_json({"type": "post", "room": room, "text": "x"})
        ids = [(m["room"], m["id"]) for m in map(_json, ada.receive_all())]
        assert ids == [("a", 1), ("b", 1), ("a", 2)]


def _json(message: str | bytes) -> Any:
    import json

    return json.loads(message)


def test_history_replayed_on_join() -> None:
    router, _, _ = setup(replay_messages=3)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        for i in range(5):
            ada.send_json({"type": "post", "room": "r", "text": f"m{i}"})
        bob = connect(client, "bob")
        reply = join(bob, "r")
        assert [m["text"] for m in reply["history"]] == ["m2", "m3", "m4"]
        assert reply["complete"] is True


def test_replay_messages_0_replays_nothing() -> None:
    router, _, _ = setup(replay_messages=0)
    with TestClient(router) as client:
        ada, bob = connect(client, "ada"), connect(client, "bob")
        join(ada, "r")
        ada.send_json({"type": "post", "room": "r", "text": "before bob"})
        assert join(bob, "r")["history"] == []


def test_resume_after_disconnect_loses_nothing() -> None:
    router, _, _ = setup(replay_messages=0)
    with TestClient(router) as client:
        ada, bob = connect(client, "ada"), connect(client, "bob")
        join(ada, "r")
        join(bob, "r")
        ada.send_json({"type": "post", "room": "r", "text": "seen"})
        last_seen = bob.receive_json()["id"]
        bob.abort()  # the network drops
        for i in range(10):
            ada.send_json({"type": "post", "room": "r", "text": f"missed {i}"})
        bob = connect(client, "bob")
        reply = join(bob, "r", since=last_seen)
        assert [m["text"] for m in reply["history"]] == [f"missed {i}" for i in range(10)]
        assert reply["complete"] is True


def test_resume_past_retention_says_incomplete() -> None:
    router, _, _ = setup(max_history_messages=5, burst=100)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        for i in range(20):
            ada.send_json({"type": "post", "room": "r", "text": f"m{i}"})
        reply = join(connect(client, "bob"), "r", since=2)
        assert [m["id"] for m in reply["history"]] == [16, 17, 18, 19, 20]
        assert reply["complete"] is False


def test_notify_reaches_every_connection_of_the_user_from_a_thread() -> None:
    router, chat, _ = setup()
    with TestClient(router) as client:
        phone, laptop, other = (
            connect(client, "ada"),
            connect(client, "ada"),
            connect(client, "bob"),
        )
        thread = threading.Thread(target=chat.notify, args=("ada", {"grade": "A"}))
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "notify from a thread did not return"
        note = {"type": "notification", "payload": {"grade": "A"}}
        assert phone.receive_json() == note
        assert laptop.receive_json() == note
        assert other.receive_all() == []


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{", "bad_json"),
        ("[1]", "bad_json"),
        ('{"type": "dance", "room": "r"}', "unknown_type"),
        ('{"type": "join"}', "bad_field"),
        ('{"type": "join", "room": ""}', "bad_field"),
        ('{"type": "join", "room": "r", "since": "x"}', "bad_field"),
        ('{"type": "post", "room": "r", "text": 5}', "bad_field"),
        ('{"type": "post", "room": "r", "text": "hi"}', "not_joined"),
        ('{"type": "leave", "room": "r"}', "not_joined"),
        ('{"type": "post", "room": "r", "text": "' + "x" * 11 + '"}', "too_long"),
        (b"binary", "bad_message"),
    ],
)
def test_errors_keep_the_connection_open(message: str | bytes, code: str) -> None:
    router, _, _ = setup(max_text_bytes=10)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        ada.send(message)
        error = ada.receive_json()
        assert error["type"] == "error" and error["code"] == code and error["message"]
        join(ada, "ok")  # still open and working


def test_already_joined_and_ref_echoed_on_errors() -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        ada.send_json({"type": "join", "room": "r", "ref": 7})
        assert ada.receive_json() == {
            "type": "error", "code": "already_joined", "message": "already in r", "ref": 7
        }  # fmt: skip


def test_policy_hooks_refuse_join_and_post() -> None:
    class Strict(ChatServer):
        def can_join(self, conn: Connection, room: str) -> bool:
            return not room.startswith("staff")

        def can_post(self, conn: Connection, room: str, text: str) -> bool:
            return conn.user != "muted"

    router = Router()
    router.add("/chat", Strict(trust_user_param=True))
    with TestClient(router) as client:
        muted = connect(client, "muted")
        muted.send_json({"type": "join", "room": "staff-room"})
        assert muted.receive_json()["code"] == "not_allowed"
        join(muted, "lobby")
        muted.send_json({"type": "post", "room": "lobby", "text": "hello"})
        assert muted.receive_json()["code"] == "not_allowed"


def test_rate_limit_answers_then_closes_abuse() -> None:
    router, _, clock = setup(rate=1.0, burst=3, max_strikes=5)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        for _ in range(2):
            ada.send_json({"type": "who", "room": "r"})
        assert [m["type"] for m in map(_json, ada.receive_all())] == ["members"] * 2
        ada.send_json({"type": "who", "room": "r"})
        assert ada.receive_json()["code"] == "rate_limited"
        clock.now += 1.0  # one token back
        ada.send_json({"type": "who", "room": "r"})
        assert ada.receive_json()["type"] == "members"
        for _ in range(5):
            ada.send_json({"type": "who", "room": "r"})
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ada.receive()
        assert closed.value.code == 1008 and closed.value.reason == "rate limit exceeded"


def test_guest_name_and_presence_cleanup_on_close() -> None:
    router, chat, _ = setup()
    with TestClient(router) as client:
        guest = client.connect("/chat")
        name = guest.receive_json()["user"]
        assert name.startswith("guest-")
        join(guest, "r")
        guest.close()
        assert chat.broker is not None
        chat.broker.members("r", done := Result[list[str]]())
        assert done.value == []


def test_token_bucket_refills_up_to_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert bucket.take(100.0) and bucket.take(100.0) and not bucket.take(100.0)


def test_everyone_is_a_guest_unless_authenticated() -> None:
    router = Router()
    chat = router.add("/chat", ChatServer())
    with TestClient(router) as client:
        impostor = client.connect("/chat?user=ada")
        assert impostor.receive_json()["user"].startswith("guest-")
        chat.notify("ada", {"secret": 1})
        assert impostor.receive_all() == []


def test_rooms_per_user_are_capped_and_reads_leave_no_state() -> None:
    router, chat, _ = setup(max_rooms_per_user=2, burst=1000)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "a")
        join(ada, "b")
        ada.send_json({"type": "join", "room": "c"})
        assert ada.receive_json()["code"] == "too_many_rooms"
        for i in range(100):
            ada.send_json({"type": "who", "room": f"nowhere-{i}"})
        ada.receive_all()
        ada.close()
        broker = chat.broker
        assert isinstance(broker, MemoryBroker)
        assert broker.room_count() == 0
