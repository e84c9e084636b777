"""The chat's attacks over real 127.0.0.1 sockets, with the ``websockets`` client: a
nested ``ref`` cannot brick a room, a client far behind resumes page by page, and a
guest's flood of rooms leaves the server's memory where it found it (measured with
tracemalloc in a server subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from spoc_sockets import Router
from spoc_sockets.channels.chat import ChatServer

from .behaviour.harness_asyncio import start as start_asyncio
from .behaviour.harness_net import LEGACY, NetServer
from .behaviour.harness_threads import start as start_threads

TIMEOUT = 20.0
ADAPTERS = pytest.mark.parametrize(
    "start", [start_asyncio, start_threads], ids=["asyncio", "threads"]
)
Start = Callable[[Router], AbstractContextManager[NetServer]]


def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=TIMEOUT))  # type: ignore[no-any-return]


def receive_until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    for _ in range(10_000):
        event = receive(ws)
        if event["type"] == kind:
            return event
    raise AssertionError(f"no {kind}")


@contextmanager
def chat_client(server: NetServer, user: str) -> Iterator[ClientConnection]:
    url = f"ws://127.0.0.1:{server.port}/chat?user={user}"
    with connect(url, max_size=None, open_timeout=TIMEOUT, **LEGACY) as ws:
        assert receive(ws) == {"type": "welcome", "user": user}
        yield ws


@ADAPTERS
def test_a_nested_ref_is_bad_json_and_everyone_still_joins(start: Start) -> None:
    router = Router()
    router.add("/chat", ChatServer(trust_user_param=True))
    with start(router) as server, chat_client(server, "mallory") as mallory:
        mallory.send(json.dumps({"type": "join", "room": "lobby"}))
        receive_until(mallory, "joined")
        for depth in (970, 30_000):
            nested = "[" * depth + "]" * depth
            mallory.send('{"type":"post","room":"lobby","text":"x","ref":' + nested + "}")
            assert receive_until(mallory, "error")["code"] == "bad_json"
        mallory.send(json.dumps({"type": "post", "room": "lobby", "text": "hi", "ref": "c1"}))
        assert receive_until(mallory, "message")["ref"] == "c1"
        with chat_client(server, "ada") as ada:
            ada.send(json.dumps({"type": "join", "room": "lobby", "since": 0}))
            joined = receive(ada)
            assert joined["type"] == "joined" and [m["text"] for m in joined["history"]] == ["hi"]


@ADAPTERS
def test_300_large_messages_behind_resumes_without_a_close(start: Start) -> None:
    router = Router()
    chat = ChatServer(
        trust_user_param=True, burst=400, max_history_bytes=8 * 2**20, max_text_bytes=16_000
    )
    router.add("/chat", chat)
    with start(router) as server, chat_client(server, "ada") as ada:
        ada.send(json.dumps({"type": "join", "room": "r"}))
        receive_until(ada, "joined")
        for i in range(300):
            ada.send(json.dumps({"type": "post", "room": "r", "text": "😀" * 4000}))
            assert receive_until(ada, "message")["id"] == i + 1
        for _attempt in range(3):  # every reconnection converges: never 1008 again
            with chat_client(server, "bob") as bob:
                bob.send(json.dumps({"type": "join", "room": "r", "since": 0}))
                page = receive_until(bob, "joined")
                ids = [m["id"] for m in page["history"]]
                while page["more"]:
                    bob.send(json.dumps({"type": "history", "room": "r", "since": ids[-1]}))
                    page = receive_until(bob, "history")
                    ids += [m["id"] for m in page["history"]]
                assert ids == list(range(1, 301)) and page["complete"] is True


# -- memory: a guest's flood leaves nothing behind ----------------------------------------

SERVER = textwrap.dedent(
    """
    import gc, sys, tracemalloc
    tracemalloc.start()
    from spoc_sockets import Response, Router
    from spoc_sockets.channels.chat import ChatServer
    from spoc_sockets.threads import serve

    router = Router()
    chat = router.add("/chat", ChatServer(
        rate=10_000, burst=10_000, empty_room_timeout=1.0,
        max_rooms_per_server=200, max_history_bytes=64 * 1024, max_text_bytes=16_000,
    ))

    def memory(request):  # not a chat activity: rooms expire on their own
        gc.collect()
        return Response(200, "%d %d" % tracemalloc.get_traced_memory())

    router.add_http("/memory", memory)
    with serve(router, "127.0.0.1", 0) as server:
        print(server.port, flush=True)
        server.serve_forever()
    """
)


def traced(port: int) -> tuple[int, int]:
    """The server's traced memory: now, and the peak so far (bytes)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/memory", timeout=TIMEOUT) as answer:
        now, peak = answer.read().split()
    return int(now), int(peak)


def test_a_guest_flood_of_rooms_and_refs_leaves_memory_bounded_then_freed(
    tmp_path: Path,
) -> None:
    """The documented bound: while rooms are held, at most max_rooms_per_server rooms of
    max_history_bytes each (here 200 x 64 KiB = 12.5 MiB of text; 3x allowed for Python
    objects); after everyone left and the retention time passed, back to within 1 MiB of
    where the server started (it was 375 MB, for good, before rooms expired)."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        url = f"ws://127.0.0.1:{port}/chat"
        with connect(url, open_timeout=TIMEOUT, **LEGACY) as warmup:
            receive(warmup)
        baseline, _ = traced(port)
        with connect(url, max_size=None, open_timeout=TIMEOUT, **LEGACY) as guest:
            receive(guest)
            for i in range(200):
                room = f"room-{i}"
                guest.send(json.dumps({"type": "join", "room": room}))
                guest.send(json.dumps({"type": "post", "room": room, "text": "x",
                                       "ref": "r" * 60_000}))  # fmt: skip
                for _ in range(10):
                    text = "\U0001f600" * 4000
                    guest.send(json.dumps({"type": "post", "room": room, "text": text,
                                           "ref": "r" * 64}))  # fmt: skip
                guest.send(json.dumps({"type": "leave", "room": room, "ref": i}))
                for _ in range(30):  # up to "left", or the leave's error (never joined)
                    event = receive(guest)
                    if event["type"] == "left" or event.get("ref") == i:
                        break
            held, peak = traced(port)
        print(f"traced memory: baseline {baseline}, held {held}, peak {peak}")
        assert peak - baseline < 3 * 200 * 64 * 1024 + 4 * 2**20  # + one output buffer
        # the rooms expire 1 s after the guest left, with nothing else happening
        deadline = time.monotonic() + TIMEOUT
        while (after := traced(port)[0]) - baseline >= 2**20 and time.monotonic() < deadline:
            threading.Event().wait(0.1)
        print(f"traced memory after the retention time: {after}")
        assert after - baseline < 2**20, (baseline, held, after)
    finally:
        process.kill()
        process.wait(timeout=TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()
