"""Chat servers in separate processes sharing rooms through one real redis-server:
messages cross processes exactly once, and a Redis killed (``kill -9``) and restarted
from its append-only file in the middle of traffic loses no acknowledged message."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from websockets.sync.client import ClientConnection, connect

from ..processes import ROOT, ServerProcess, running
from .conftest import RedisServer

TIMEOUT = 20.0  # seconds any one wait lasts at most
SERVE = [sys.executable, "-c", "from spoc_sockets.cli import main; main()", "serve"]


@contextmanager
def chat_nodes(
    redis_server: RedisServer, count: int, presence_ttl: float = 30.0
) -> Iterator[list[tuple[ServerProcess, int]]]:
    """``count`` server processes on ``redis_server``; each with its port."""
    env = {"SPOC_TEST_REDIS_URL": redis_server.url, "SPOC_TEST_PRESENCE_TTL": str(presence_ttl)}
    command = [*SERVE, "tests.redis.chatapp:router", "--port", "0"]
    with ExitStack() as stack:
        nodes = []
        for _ in range(count):
            server = stack.enter_context(running(command, ROOT, env))
            port = int(server.wait_for_line(r"on http://127\.0\.0\.1:(\d+)/").group(1))
            nodes.append((server, port))
        yield nodes


@contextmanager
def client(port: int, user: str) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{port}/chat?user={user}", open_timeout=TIMEOUT) as ws:
        assert receive(ws) == {"type": "welcome", "user": user}
        yield ws


def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=TIMEOUT))  # type: ignore[no-any-return]


def request(ws: ClientConnection, answer: str, **message: Any) -> dict[str, Any]:
    """Send ``message``; the first event of type ``answer`` (or an error) after it."""
    ws.send(json.dumps(message))
    for _ in range(10_000):
        event = receive(ws)
        if event["type"] in (answer, "error"):
            return event
    raise AssertionError(f"no {answer}")


def messages_until(ws: ClientConnection, last: set[str]) -> list[str]:
    """The texts of the messages received until every text of ``last`` came."""
    texts: list[str] = []
    for _ in range(10_000):
        event = receive(ws)
        if event["type"] == "message":
            texts.append(event["text"])
            if last <= set(texts):
                return texts
    raise AssertionError(f"never got {last}")


def presence(ws: ClientConnection, user: str, kind: str) -> dict[str, Any]:
    """The first presence event of ``kind`` about ``user`` received."""
    for _ in range(10_000):
        event = receive(ws)
        if event["type"] == "presence" and event["user"] == user and event["event"] == kind:
            return event
    raise AssertionError(f"no {kind} of {user}")


def exchange_exactly_once(one: ClientConnection, other: ClientConnection, room: str) -> None:
    """Each of two members of ``room`` posts; each gets both posts, once."""
    one.send(json.dumps({"type": "post", "room": room, "text": "from one"}))
    other.send(json.dumps({"type": "post", "room": room, "text": "from other"}))
    ends = {"end one", "end other"}  # posted after: a duplicate would come before them
    for ws, end in ((one, "end one"), (other, "end other")):
        ws.send(json.dumps({"type": "post", "room": room, "text": end}))
    for ws in (one, other):
        texts = messages_until(ws, ends)
        assert sorted(texts) == sorted(["from one", "from other", *ends])


def test_a_message_crosses_processes_exactly_once(redis_server: RedisServer) -> None:
    with (
        chat_nodes(redis_server, 2) as ((_, port_a), (_, port_b)),
        client(port_a, "ada") as ada,
        client(port_b, "bob") as bob,
    ):
        assert request(ada, "joined", type="join", room="lobby")["members"] == ["ada"]
        joined = request(bob, "joined", type="join", room="lobby")
        assert joined["members"] == ["ada", "bob"]  # ada, on the other process, is there
        joined = {"type": "presence", "room": "lobby", "user": "bob", "event": "joined"}
        assert presence(ada, "bob", "joined") == joined
        exchange_exactly_once(ada, bob, "lobby")
        assert request(bob, "members", type="who", room="lobby")["members"] == ["ada", "bob"]


def test_redis_killed_mid_traffic_loses_no_acknowledged_message(
    redis_server: RedisServer,
) -> None:
    acknowledged: list[int] = []  # the posts (by ref) the poster saw as message events
    refused: list[int] = []  # ... and those answered "unavailable"
    with chat_nodes(redis_server, 2) as ((_, port_a), (_, port_b)):
        with client(port_a, "ada") as ada:
            request(ada, "joined", type="join", room="r")

            def post(ref: int) -> None:
                event = request(ada, "message", type="post", room="r", text=f"m{ref}", ref=ref)
                assert event["ref"] == ref
                if event["type"] == "message":
                    acknowledged.append(ref)
                else:
                    assert event["code"] == "unavailable"
                    refused.append(ref)

            refs = itertools.count(1)
            for _ in range(30):
                post(next(refs))
            redis_server.kill()
            for _ in range(5):  # Redis is gone: refused, never acknowledged
                post(next(refs))
            assert refused == [31, 32, 33, 34, 35]
            redis_server.start()  # from its append-only file
            pause = threading.Event()
            for _ in range(1000):  # bounded: the broker reconnects with a capped backoff
                if len(acknowledged) == 40:
                    break
                post(ref := next(refs))
                if refused[-1] == ref:
                    pause.wait(0.05)
        assert acknowledged[:30] == list(range(1, 31)) and len(acknowledged) == 40
        with client(port_b, "bob") as bob:  # resumes on the other process
            page = request(bob, "joined", type="join", room="r", since=0)
            history = page["history"]
            while page["more"]:
                page = request(bob, "history", type="history", room="r", since=history[-1]["id"])
                history += page["history"]
    refs = [message["ref"] for message in history]
    assert refs == acknowledged  # each once, in order: nothing acknowledged was lost
    ids = [message["id"] for message in history]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # dense: a refused post took no id


def test_the_users_of_a_killed_process_leave_within_the_presence_ttl(
    redis_server: RedisServer,
) -> None:
    with (
        chat_nodes(redis_server, 3, presence_ttl=1.0) as nodes,
        client(nodes[0][1], "ada") as ada,
        client(nodes[1][1], "bob") as bob,
        client(nodes[2][1], "cy") as cy,
    ):
        for ws in (ada, bob, cy):
            request(ws, "joined", type="join", room="r")
        assert request(cy, "members", type="who", room="r")["members"] == ["ada", "bob", "cy"]
        nodes[2][0].kill()  # kill -9: cy's process never says cy left
        left = {"type": "presence", "room": "r", "user": "cy", "event": "left"}
        for ws in (ada, bob):  # each told once, by whichever process found cy's dead first
            assert presence(ws, "cy", "left") == left
        assert request(ada, "members", type="who", room="r")["members"] == ["ada", "bob"]
        pause = threading.Event()
        pause.wait(2.5)  # more than two presence refreshes of each live process
        for ws in (ada, bob):  # nothing about cy came since: the one "left" was all
            ws.send(json.dumps({"type": "post", "room": "r", "text": "end"}))
        for ws in (ada, bob):
            events = []
            for _ in range(100):
                events.append(receive(ws))
                if [e.get("text") for e in events].count("end") == 2:
                    break
            assert [e for e in events if e.get("user") == "cy"] == []


def test_workers_of_one_serve_command_share_rooms(redis_server: RedisServer) -> None:
    """``spoc-sockets serve --workers 2``: the app (and its broker) is made before the
    workers are forked; each worker is a node of its own all the same."""
    env = {"SPOC_TEST_REDIS_URL": redis_server.url}
    command = [*SERVE, "tests.redis.chatapp:router", "--port", "0", "--workers", "2"]
    users = [f"u{index}" for index in range(6)]  # spread over the workers by the kernel
    with running(command, ROOT, env) as server, ExitStack() as stack:
        port = int(server.wait_for_line(r"on http://127\.0\.0\.1:(\d+)/").group(1))
        clients = [stack.enter_context(client(port, user)) for user in users]
        for ws in clients:
            request(ws, "joined", type="join", room="lobby")
        for ws, user in zip(clients, users, strict=True):
            ws.send(json.dumps({"type": "post", "room": "lobby", "text": user}))
        for ws in clients:
            assert sorted(messages_until(ws, set(users))) == users  # each once
        assert request(clients[0], "members", type="who", room="lobby")["members"] == users
