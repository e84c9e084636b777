"""ChatServer on the open internet: every bound, and the attacks they stop (in memory).

Each test here is an attack a guest could run against the chat: growing the server's
memory for good, bricking a room for everyone, making resume fail forever, reading a
room's members without joining it. See docs/chat-protocol.rst, "Bounds".
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from typing import Any

import pytest

from spoc_sockets import Router, UsageError
from spoc_sockets.channels.brokers import HistoryPage
from spoc_sockets.channels.brokers.memory import MemoryBroker
from spoc_sockets.channels.chat import ChatServer
from spoc_sockets.testing import HandshakeRejected, TestClient, WebSocket

from .test_chat import Clock, Result, connect, join, setup


def events(ws: WebSocket) -> list[dict[str, Any]]:
    return [json.loads(m) for m in ws.receive_all()]


def error_code(ws: WebSocket) -> str:
    reply = ws.receive_json()
    assert reply["type"] == "error", reply
    return str(reply["code"])


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def ada_posts(client: TestClient, count: int, text: str) -> None:
    """``ada`` joins room ``r`` and posts ``count`` messages: ``<n> <text>``."""
    ada = connect(client, "ada")
    join(ada, "r")
    for i in range(count):
        ada.send_json({"type": "post", "room": "r", "text": f"{i:03d}{text}"})
        ada.receive_all()


# -- nothing a client sends breaks what others receive -----------------------------------


@pytest.mark.parametrize(
    "message",
    [
        '{"type": "post", "room": "lobby", "text": "x", "ref": ' + deep(970) + "}",
        '{"type": "post", "room": "lobby", "text": "x", "ref": ' + deep(30_000) + "}",
        deep(30_000),
        '{"type": [], "room": "lobby"}',
        '{"type": {"a": 1}, "room": "lobby"}',
        '{"type": "post", "room": "lobby", "text": "x", "ref": NaN}',
        '{"type": "join", "room": "lobby", "since": ' + "9" * 5000 + "}",
    ],
    ids=["ref-970", "ref-30000", "30000", "type-list", "type-object", "nan", "huge-int"],
)
def test_parse_surprises_are_bad_json_and_the_room_still_works(message: str) -> None:
    router, _, _ = setup(burst=100)
    with TestClient(router) as client:
        mallory, ada = connect(client, "mallory"), connect(client, "ada")
        join(mallory, "lobby")
        mallory.send(message)
        assert error_code(mallory) == "bad_json"
        mallory.send_json({"type": "post", "room": "lobby", "text": "still here"})
        assert mallory.receive_json()["text"] == "still here"
        reply = join(ada, "lobby", since=0)  # every other client can still join and resume
        assert [m["text"] for m in reply["history"]] == ["still here"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ref", "r" * 65),
        ("ref", 2**60),
        ("ref", True),
        ("ref", 1.5),
        ("ref", "\ud800"),
        ("text", "\ud800 lone surrogate"),
        ("room", "\ud800"),
        ("room", "tab\there"),
        ("room", "r" * 101),
        ("room", " lobby"),  # another room to the eye
        ("room", "lobby "),
        ("room", "cafe\u0301"),  # not NFC: "café" spelt another way
    ],
)
def test_unstorable_fields_are_refused_at_the_door(field: str, value: object) -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        mallory, ada = connect(client, "mallory"), connect(client, "ada")
        join(mallory, "lobby")
        post = {"type": "post", "room": "lobby", "text": "x", field: value}
        mallory.send(json.dumps(post))  # ensure_ascii: lone surrogates travel as \\ud800
        assert error_code(mallory) == "bad_field"
        reply = join(ada, "lobby", since=0)
        assert reply["history"] == [] and reply["complete"] is True
        ada.send_json({"type": "who", "room": "lobby"})
        assert ada.receive_json()["members"] == ["ada", "mallory"]


def test_an_error_echoes_only_a_valid_ref() -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        ada = connect(client, "ada")
        ada.send_json({"type": "post", "room": "r", "text": "x", "ref": "c-1"})
        assert ada.receive_json()["ref"] == "c-1"
        ada.send_json({"type": "post", "room": "r", "text": "x", "ref": "r" * 1000})
        assert "ref" not in ada.receive_json()


# -- field bounds count bytes of UTF-8, as the wire and max_message_size do ---------------


@pytest.mark.parametrize(
    ("options", "message", "code"),
    [
        ({"max_text_bytes": 6}, {"type": "post", "room": "r", "text": "ééé"}, None),  # 6 bytes
        ({"max_text_bytes": 6}, {"type": "post", "room": "r", "text": "éééa"}, "too_long"),
        ({"max_text_bytes": 6}, {"type": "post", "room": "r", "text": "😀😀"}, "too_long"),
        ({"max_text_bytes": 6}, {"type": "post", "room": "r", "text": "abcdefg"}, "too_long"),
        ({"max_ref_bytes": 4}, {"type": "post", "room": "r", "text": "x", "ref": "éé"}, None),
        ({"max_ref_bytes": 4}, {"type": "post", "room": "r", "text": "x", "ref": "ééa"}, "bad"),
    ],
)
def test_text_and_ref_are_bounded_in_bytes_not_characters(
    options: dict[str, int], message: dict[str, str], code: str | None
) -> None:
    router, _, _ = setup(**options)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        ada.send_json(message)
        reply = ada.receive_json()
        if code is None:
            assert reply["type"] == "message" and reply["text"] == message["text"], reply
        elif code == "bad":  # a ref too long is not echoed in the error either
            assert reply["type"] == "error" and reply["code"] == "bad_field" and "ref" not in reply
            assert "4 bytes" in reply["message"]
        else:
            assert reply["type"] == "error" and reply["code"] == code, reply
            assert "6 bytes" in reply["message"]


def test_a_room_name_is_bounded_in_bytes() -> None:
    router, _, _ = setup(max_room_name_bytes=4)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        assert join(ada, "éé")["type"] == "joined"  # 2 characters, 4 bytes
        ada.send_json({"type": "join", "room": "ééa"})  # 3 characters, 5 bytes
        reply = ada.receive_json()
        assert reply["code"] == "bad_field" and "1 to 4 bytes" in reply["message"]


# -- who is only for members -------------------------------------------------------------


def test_who_answers_only_members() -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        ada, eve = connect(client, "ada"), connect(client, "eve")
        join(ada, "secret")
        eve.send_json({"type": "who", "room": "secret"})
        assert error_code(eve) == "not_joined"


# -- memory: rooms and history bounded, freed after the retention time -------------------


def test_history_is_bounded_in_bytes_and_messages() -> None:
    router, chat, _ = setup(max_history_messages=100, max_history_bytes=10_000, burst=1000)
    with TestClient(router) as client:
        ada_posts(client, 50, "x" * 997)
        reply = join(connect(client, "bob"), "r", since=0)
        kept = reply["history"]
        assert sum(len(json.dumps(m, ensure_ascii=False)) for m in kept) <= 10_000
        assert 5 <= len(kept) < 50 and kept[-1]["text"].startswith("049")
        assert reply["complete"] is False  # the oldest were dropped for room
        ada_posts(client, 200, "")
        assert isinstance(chat.broker, MemoryBroker)
        assert len(chat.broker._rooms["r"].history) == 100


def test_empty_rooms_are_freed_after_the_retention_time() -> None:
    router, chat, clock = setup(empty_room_timeout=60.0, burst=1000)
    broker = chat.broker
    assert isinstance(broker, MemoryBroker)
    with TestClient(router) as client:
        guest = connect(client, "mallory")
        for i in range(20):
            join(guest, f"room-{i}")
            guest.send_json({"type": "post", "room": f"room-{i}", "text": "x" * 4000})
            guest.send_json({"type": "leave", "room": f"room-{i}"})
            guest.receive_all()
        assert broker.room_count() == 20  # kept for resume...
        guest.close()
        clock.now += 59.0
        bob = connect(client, "bob")
        bob.send_json({"type": "join", "room": "other"})
        bob.receive_all()
        assert broker.room_count() == 21
        clock.now += 1.0  # ...until they stayed empty for the retention time
        bob.send_json({"type": "post", "room": "other", "text": "hi"})
        bob.receive_all()
        assert broker.room_count() == 1
        bob.close()
        clock.now += 60.0
        chat.expire()  # what an idle server's timer would call
        assert broker.room_count() == 0 and broker._empty == {}


def test_an_idle_server_frees_its_empty_rooms_by_itself() -> None:
    """Everyone left and nobody comes back: the rooms still go, on the real clock."""
    router = Router()
    chat = router.add("/chat", ChatServer(trust_user_param=True, empty_room_timeout=0.1))
    broker = chat.broker
    assert isinstance(broker, MemoryBroker)
    with TestClient(router) as client:
        guest = connect(client, "mallory")
        for room in ("a", "b"):
            join(guest, room)
            guest.send_json({"type": "post", "room": room, "text": "x" * 4000})
            guest.receive_all()
        assert broker.room_count() == 2
        guest.close()
    deadline = time.monotonic() + 20.0
    while broker.room_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.room_count() == 0


def test_a_room_freed_since_a_client_saw_it_says_incomplete() -> None:
    router, _, clock = setup(empty_room_timeout=10.0)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        for i in range(3):
            ada.send_json({"type": "post", "room": "r", "text": f"old {i}"})
        last = events(ada)[-1]["id"]
        ada.close()
        clock.now += 10.0
        bob = connect(client, "bob")
        join(bob, "r")  # the old room expired: this is a new one
        bob.send_json({"type": "post", "room": "r", "text": "new"})
        bob.receive_all()
        reply = join(connect(client, "ada"), "r", since=last)
        # ids never restart: ada saw every message of the old room, and misses nothing
        assert [(m["id"], m["text"]) for m in reply["history"]] == [(last + 1, "new")]
        assert reply["complete"] is True


def test_a_client_who_missed_messages_of_a_freed_room_is_told_incomplete() -> None:
    router, _, clock = setup(empty_room_timeout=10.0)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        ada.send_json({"type": "post", "room": "r", "text": "seen"})
        seen = ada.receive_json()["id"]
        for i in range(3):  # posted after bob left: lost with the room
            ada.send_json({"type": "post", "room": "r", "text": f"old {i}"})
        ada.close()
        clock.now += 10.0
        bob = connect(client, "bob")
        join(bob, "r")  # a new room, whose ids follow every id the old one gave
        for i in range(5):
            bob.send_json({"type": "post", "room": "r", "text": f"new {i}"})
        assert min(m["id"] for m in events(bob)) > seen + 3
        reply = join(connect(client, "carl"), "r", since=seen)
        assert reply["complete"] is False
        assert [m["text"] for m in reply["history"]] == [f"new {i}" for i in range(5)]


def wall_clock_only(**options: Any) -> tuple[Router, Clock]:
    """A chat whose wall clock the test steps; its monotonic clock is the real one."""
    clock = Clock()
    router = Router()
    router.add("/chat", ChatServer(clock=clock, trust_user_param=True, **options))
    return router, clock


def test_a_wall_clock_step_back_rate_limits_nobody() -> None:
    router, clock = wall_clock_only()
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        clock.now -= 30.0  # NTP steps the clock back
        for i in range(10):  # within the burst
            clock.now += 0.1
            ada.send_json({"type": "post", "room": "r", "text": f"m{i}"})
        assert [m["type"] for m in events(ada)] == ["message"] * 10
        assert ada.close_code is None


def test_a_wall_clock_step_forward_expires_no_room() -> None:
    router, clock = wall_clock_only(empty_room_timeout=600.0)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        ada.send_json({"type": "post", "room": "r", "text": "kept"})
        ada.close()
        clock.now += 3600.0  # a machine resumed after an hour: the room did not wait
        reply = join(connect(client, "bob"), "r")
        assert [m["text"] for m in reply["history"]] == ["kept"]
        assert reply["history"][0]["ts"] == clock.now - 3600.0  # ts is the wall clock


def test_rooms_per_server_are_capped() -> None:
    router, _, _ = setup(max_rooms_per_server=3, empty_room_timeout=0.0, burst=1000)
    with TestClient(router) as client:
        ada, bob = connect(client, "ada"), connect(client, "bob")
        for room in ("a", "b", "c"):
            join(ada, room)
        bob.send_json({"type": "join", "room": "d"})
        assert error_code(bob) == "rooms_full"
        join(bob, "a")  # an existing room is always open
        ada.send_json({"type": "leave", "room": "c"})  # empty, no history: freed at once
        ada.receive_all()
        join(bob, "d")


def test_a_full_server_frees_the_room_empty_the_longest() -> None:
    """Guests filling the server with rooms and leaving cannot make ``rooms_full``
    answer everyone for ``empty_room_timeout``: only rooms with members hold a place."""
    router, chat, _ = setup(max_rooms_per_server=3, empty_room_timeout=600.0, burst=1000)
    with TestClient(router) as client:
        guest = client.connect("/chat")
        guest.receive_all()
        for room in ("a", "b", "c"):
            join(guest, room)
            guest.send_json({"type": "post", "room": room, "text": "kept"})
            guest.receive_all()
        for room in ("a", "b", "c"):  # in this order: "a" is empty the longest
            guest.send_json({"type": "leave", "room": room})
        guest.close()
        ada = connect(client, "ada")
        join(ada, "d")  # "a" (empty the longest) gives its place
        bob = connect(client, "bob")
        assert [m["text"] for m in join(bob, "b")["history"]] == ["kept"]
        assert join(bob, "e")["history"] == []  # "c" goes: "b" has a member again
        assert chat.broker is not None and chat.broker.room_count() == 3
        bob.send_json({"type": "join", "room": "a"})  # b, d and e have members: full
        assert error_code(bob) == "rooms_full"
        ada.send_json({"type": "leave", "room": "d"})
        ada.receive_all()
        assert join(bob, "a")["history"] == []  # "a" was freed: a new room


def test_history_memory_is_close_to_its_utf8_bytes() -> None:
    """The history bound counts UTF-8 bytes: what the server holds must be about that,
    whatever the text (a str with one emoji would take 4 bytes a character)."""
    router, _, _ = setup(rate=1e6, burst=1e6, max_rooms_per_user=1000)
    with TestClient(router) as client:
        ada = connect(client, "ada")
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            counted = 0
            for room in range(20):
                join(ada, f"r{room}")
                for i in range(40):
                    text = "a" * 3996 + ("\U0001f600" if i % 2 else "aaaa")  # 4000 bytes
                    ada.send_json({"type": "post", "room": f"r{room}", "text": text})
                    (stored,) = ada.receive_all()
                    assert isinstance(stored, str)
                    counted += len(stored.encode())
            ada.close()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert counted > 3_000_000
    assert held < 1.3 * counted, (held, counted)


def test_rooms_per_user_count_every_connection_of_the_user() -> None:
    router, _, _ = setup(max_rooms_per_user=2)
    with TestClient(router) as client:
        phone, laptop = connect(client, "ada"), connect(client, "ada")
        join(phone, "a")
        join(laptop, "b")
        join(laptop, "a")  # a room the user is in already does not count twice
        phone.send_json({"type": "join", "room": "c"})
        assert error_code(phone) == "too_many_rooms"


# -- resume always converges -------------------------------------------------------------


def test_a_client_300_large_messages_behind_resumes_page_by_page() -> None:
    """300 posts of 4,000 emoji (16 KB each on the wire): the whole backlog is ~4.8 MB,
    past the 4 MiB output bound that closed such a client with 1008 on every try."""
    router, _, _ = setup(burst=1000, max_history_bytes=8 * 2**20, max_text_bytes=16_000)
    with TestClient(router) as client:
        ada_posts(client, 300, "😀" * 3997)
        bob = connect(client, "bob")
        bob.send_json({"type": "join", "room": "r", "since": 0})
        reply = bob.receive_json()  # never a close: a page within the output bound
        bob.receive_all()
        got = [m["id"] for m in reply["history"]]
        assert reply["type"] == "joined" and reply["complete"] is True and reply["more"]
        pages = 1
        while reply["more"]:
            bob.send_json({"type": "history", "room": "r", "since": got[-1]})
            reply = bob.receive_json()
            assert reply["type"] == "history" and reply["complete"] is True
            got += [m["id"] for m in reply["history"]]
            pages += 1
            assert pages < 100
        assert got == list(range(1, 301)) and pages >= 16


def test_a_backlog_beyond_the_history_bound_is_told_incomplete() -> None:
    router, _, _ = setup(burst=1000, max_text_bytes=16_000)
    with TestClient(router) as client:
        ada_posts(client, 300, "😀" * 3997)
        reply = join(connect(client, "bob"), "r", since=0)
        assert reply["complete"] is False  # 256 KiB kept per room: the rest is gone
        assert reply["history"][-1]["id"] == 300 and reply["more"] is False


def test_history_asks_are_checked() -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        ada = connect(client, "ada")
        ada.send_json({"type": "history", "room": "r", "since": 0})
        assert error_code(ada) == "not_joined"
        join(ada, "r")
        for since in (None, -1, "1", True, 2**60):
            ada.send_json({"type": "history", "room": "r", "since": since})
            assert error_code(ada) == "bad_field"


# -- identity ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "x" * 33,
        "guest-1",
        "a b",
        "<b>",
        "Guest-1",  # a guest's name in any case
        "GUEST",
        "guest7",
        "%D0%B0da",  # "ada" with a Cyrillic a (U+0430)
        "%EF%BD%81da",  # with a fullwidth a (U+FF41)
        "%D9%A3",  # an Arabic-Indic digit
    ],
)
def test_trusted_user_names_are_validated(name: str) -> None:
    router, _, _ = setup()
    with TestClient(router) as client, pytest.raises(HandshakeRejected) as refused:
        client.connect("/chat?user=" + name.replace(" ", "%20"))
    assert refused.value.status == 400


def test_a_room_name_in_nfc_is_one_room() -> None:
    router, _, _ = setup()
    with TestClient(router) as client:
        ada, bob = connect(client, "ada"), connect(client, "bob")
        join(ada, "caf\u00e9")
        assert join(bob, "caf\u00e9")["members"] == ["ada", "bob"]


@pytest.mark.parametrize(
    ("peer", "headers"),
    [
        (("203.0.113.5", 40000), ()),
        (("127.0.0.1", 40000), (("X-Forwarded-For", "203.0.113.5"),)),
        (("::1", 40000), (("Forwarded", "for=203.0.113.5"),)),
        (("localhost", 40000), ()),  # not an address: not known to be loopback
    ],
)
def test_trust_user_param_is_refused_beyond_loopback(
    peer: tuple[str, int], headers: tuple[tuple[str, str], ...]
) -> None:
    router, _, _ = setup()
    with TestClient(router) as client, pytest.raises(HandshakeRejected) as refused:
        client.connect("/chat?user=ada", peer=peer, headers=headers)
    assert refused.value.status == 403


def test_a_notification_that_cannot_be_encoded_is_a_usage_error() -> None:
    router, chat, _ = setup()
    with TestClient(router) as client:
        ada = connect(client, "ada")
        for payload in ({"x": float("nan")}, "\ud800", object()):
            with pytest.raises(UsageError, match="payload"):
                chat.notify("ada", payload)
        assert ada.receive_all() == []


def test_the_memory_broker_alone() -> None:
    broker = MemoryBroker()
    broker.leave("nowhere", "ada", 0.0, left := Result[bool]())
    assert left.value is False  # never joined: nothing to undo
    broker.post("gone", '{"type":"message"}', 10, 1000, stored := Result[str]())
    assert json.loads(stored.value) == {"type": "message", "id": 1}  # e.g. expired meanwhile
    broker.post("gone", '{"type":"message","text":"' + "x" * 2000 + '"}', 10, 1000, Result())
    broker.history("gone", 0, 10, 1000, page := Result[HistoryPage]())
    assert len(page.value.messages) == 1 and page.value.complete is False  # the newest stays
    assert broker.expire(0.0, 60.0) is None


# -- options: validated, named in the error ------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_history_bytes", "1000"),
        ("max_history_bytes", 0),
        ("max_history_messages", 1.5),
        ("max_rooms_per_server", None),
        ("max_rooms_per_user", True),
        ("empty_room_timeout", -1),
        ("empty_room_timeout", float("nan")),
        ("history_page_bytes", 3 * 2**20),  # more than half the output bound
        ("max_ref_bytes", [64]),
        ("max_json_depth", 0),
        ("replay_messages", -1),
        ("rate", "fast"),
        ("trust_user_param", "yes"),
        ("broker", object()),
        ("clock", 5),
        ("monotonic_clock", "now"),
    ],
)
def test_bad_options_are_refused_by_name(option: str, value: object) -> None:
    with pytest.raises(UsageError, match=option):
        ChatServer(**{option: value})


def test_one_page_is_at_most_history_page_bytes() -> None:
    router = Router()
    clock = Clock()
    router.add(
        "/chat", ChatServer(clock=clock, trust_user_param=True, history_page_bytes=5000, burst=99)
    )
    with TestClient(router) as client:
        ada = connect(client, "ada")
        join(ada, "r")
        for _ in range(20):
            ada.send_json({"type": "post", "room": "r", "text": "y" * 1000})
        ada.receive_all()
        bob = connect(client, "bob")
        bob.send_json({"type": "join", "room": "r", "since": 0})
        raw = bob.receive()
        assert isinstance(raw, str)
        history = json.loads(raw)["history"]
        assert len(history) == 4 and json.loads(raw)["more"] is True
        assert sum(len(json.dumps(m)) for m in history) <= 5000
