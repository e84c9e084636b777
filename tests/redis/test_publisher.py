"""``Publisher``: a process that serves no WebSocket posts to rooms and notifies users of
the chats served by other processes on the same real redis-server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import examples.publisher
from spoc_sockets import UsageError
from spoc_sockets.channels.brokers import BrokerUnavailable
from spoc_sockets.channels.brokers.redis import Publisher

from ..processes import ROOT
from ..test_chat_net import receive_until
from .conftest import RedisServer, free_port
from .test_chat_nodes import TIMEOUT, chat_nodes, client, request


def test_a_post_and_a_notification_reach_a_client_of_a_serving_process(
    redis_server: RedisServer,
) -> None:
    with (
        chat_nodes(redis_server, 1) as ((_, port),),
        client(port, "ada") as ada,
        Publisher(redis_server.url) as publisher,
    ):
        before = publisher.post("r", "bot", "before anyone joined")  # kept in the history
        joined = request(ada, "joined", type="join", room="r")
        assert [(m["id"], m["user"], m["text"]) for m in joined["history"]] == [
            (before, "bot", "before anyone joined")
        ]
        after = publisher.post("r", "bot", "hello ada")
        assert after == before + 1  # the room's ids, as a member's post would take
        message = receive_until(ada, "message")
        assert (message["id"], message["user"], message["text"]) == (after, "bot", "hello ada")
        assert publisher.notify("ada", {"n": 1}) == 1  # one process has ada
        assert receive_until(ada, "notification") == {"type": "notification", "payload": {"n": 1}}
        assert publisher.notify("nobody", {"n": 2}) == 0
        # ada posts again: the ids go on from the publisher's
        assert request(ada, "message", type="post", room="r", text="me")["id"] == after + 1


def test_the_example_posts_from_a_script_and_a_view(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with chat_nodes(redis_server, 1) as ((_, port),), client(port, "ada") as ada:
        request(ada, "joined", type="join", room="lobby")
        request(ada, "joined", type="join", room="shop")
        script = [sys.executable, "-m", "examples.publisher", redis_server.url]
        done = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        message = receive_until(ada, "message")
        assert (message["room"], message["text"]) == ("lobby", "hello from a script")
        assert done.stdout == f"posted to lobby as message {message['id']}\n"

        with Publisher(redis_server.url) as publisher:
            monkeypatch.setattr(examples.publisher, "publisher", publisher)
            assert examples.publisher.order_shipped("ada", "A-17")
        payload = {"event": "shipped", "order": "A-17"}
        assert receive_until(ada, "notification") == {"type": "notification", "payload": payload}
        assert receive_until(ada, "message")["text"] == "order A-17 is on its way"


def test_redis_unreachable_is_an_error_not_a_silent_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    with Publisher(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0) as publisher:
        with pytest.raises(BrokerUnavailable, match="failed"):
            publisher.post("r", "bot", "lost?")
        with pytest.raises(BrokerUnavailable, match="failed"):
            publisher.notify("ada", "lost?")
        monkeypatch.setattr(examples.publisher, "publisher", publisher)
        assert not examples.publisher.order_shipped("ada", "A-18")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: p.post("", "bot", "x"), "room is a string of 1 to 100 bytes"),
        (lambda p: p.post(["r"], "bot", "x"), "room is a string of 1 to 100 bytes"),
        (lambda p: p.post(" r", "bot", "x"), "room is NFC, without spaces"),
        (lambda p: p.post("r\n", "bot", "x"), "room has only printable characters"),
        (lambda p: p.post("r", "", "x"), "user is a non-empty string"),
        (lambda p: p.post("r", None, "x"), "user is a non-empty string"),
        (lambda p: p.post("r", "bot", b"x"), "text is a string of at most 4000 bytes"),
        (lambda p: p.post("r", "bot", "é" * 2001), "text is a string of at most 4000 bytes"),
        (lambda p: p.post("r", "bot", "\ud800"), "valid Unicode"),
        (lambda p: p.notify("", {}), "user is a non-empty string"),
        (lambda p: p.notify("ada", {1j}), "not encodable as JSON"),
    ],
)
def test_bad_arguments_are_refused_before_redis(call: Any, error: str) -> None:
    unreached = f"redis://127.0.0.1:{free_port()}/0"
    with Publisher(unreached) as publisher, pytest.raises(UsageError, match=error):
        call(publisher)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"url": ""}, "url is a non-empty string"),
        ({"url": 6379}, "url is a non-empty string"),
        ({"prefix": "a{b}"}, "prefix is a non-empty string without braces"),
        ({"timeout": 0}, "timeout"),
        ({"history_ttl": "1h"}, "history_ttl"),
        ({"max_history_messages": 0}, "max_history_messages"),
        ({"max_text_bytes": True}, "max_text_bytes"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], error: str) -> None:
    arguments: dict[str, Any] = {"url": "redis://127.0.0.1:6379/0", **options}
    with pytest.raises(UsageError, match=error):
        Publisher(**arguments)
