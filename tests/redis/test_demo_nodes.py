"""``python -m spoc_sockets --redis URL``: demo processes sharing rooms and streams
through one real redis-server; a user's token, issued by one, is accepted by the others
given the same secret."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from websockets.sync.client import connect
from websockets.typing import Origin

from ..processes import ROOT, ServerProcess, running
from .conftest import RedisServer
from .test_chat_nodes import TIMEOUT, exchange_exactly_once, receive, request

SECRET = "a secret the demo processes share"


@contextmanager
def demo_nodes(redis_server: RedisServer, count: int) -> Iterator[list[tuple[ServerProcess, int]]]:
    """``count`` demo processes on ``redis_server``, one secret; each with its port."""
    command = [sys.executable, "-m", "spoc_sockets", "--port", "0", "--redis", redis_server.url]
    with ExitStack() as stack:
        nodes = []
        for _ in range(count):
            demo = stack.enter_context(running(command, ROOT, {"SPOC_DEMO_SECRET": SECRET}))
            port = int(demo.wait_for_line(r"listening on http://127\.0\.0\.1:(\d+)/").group(1))
            nodes.append((demo, port))
        yield nodes


def token(port: int, name: str) -> tuple[str, str]:
    """A user id and its token, from the demo on ``port``."""
    url = f"http://127.0.0.1:{port}/token?name={name}"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        issued = json.loads(response.read())
    return issued["user"], issued["token"]


def test_two_demo_processes_share_a_room_exactly_once(redis_server: RedisServer) -> None:
    with demo_nodes(redis_server, 2) as ((demo_a, port_a), (demo_b, port_b)):
        ada, ada_token = token(port_a, "ada")
        bob, bob_token = token(port_a, "bob")  # issued by A, used on B: one secret
        with (
            connect(f"ws://127.0.0.1:{port_a}/chat?token={ada_token}") as on_a,
            connect(f"ws://127.0.0.1:{port_b}/chat?token={bob_token}") as on_b,
        ):
            assert receive(on_a) == {"type": "welcome", "user": ada}
            assert receive(on_b) == {"type": "welcome", "user": bob}
            request(on_a, "joined", type="join", room="lobby")
            assert request(on_b, "joined", type="join", room="lobby")["members"] == sorted(
                [ada, bob]
            )
            exchange_exactly_once(on_a, on_b, "lobby")
        for demo in (demo_a, demo_b):
            assert demo.stop() == 0
            assert "Traceback" not in demo.output
            assert "no secret" not in demo.output  # the secret came from SPOC_DEMO_SECRET


def test_two_demo_processes_share_a_stream(redis_server: RedisServer) -> None:
    with demo_nodes(redis_server, 2) as ((_, port_a), (_, port_b)):
        origin_a, origin_b = (Origin(f"http://127.0.0.1:{port}") for port in (port_a, port_b))
        url_a, url_b = (f"ws://127.0.0.1:{port}/stream/s" for port in (port_a, port_b))
        with connect(f"{url_a}?role=publish", origin=origin_a) as publisher:
            assert receive(publisher) == {"type": "publishing", "stream": "s"}
            with connect(url_b, origin=origin_b) as viewer:
                assert receive(viewer)["live"] is True
                sent = [b"\x00header", b"\x01key", b"\x02delta"]
                for media in sent:
                    publisher.send(media)
                assert [viewer.recv(timeout=TIMEOUT) for _ in sent] == sent
