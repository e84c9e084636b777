"""Streams across processes on one real redis-server: a publisher on one process,
viewers on three; media crosses as the same raw bytes; a late viewer on any process gets
the init segment and the latest key frame; the end of the stream reaches every viewer;
a second publisher on another process is refused."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from spoc_sockets.channels.stream import DELTA, INIT, KEY, STREAM_ENDED

from .conftest import RedisServer
from .test_chat_nodes import TIMEOUT, chat_nodes


@contextmanager
def stream_client(port: int, query: str = "") -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{port}/stream/s{query}", open_timeout=TIMEOUT) as ws:
        yield ws


def event(ws: ClientConnection) -> Any:
    """The next message: JSON text decoded, bytes as they are."""
    message = ws.recv(timeout=TIMEOUT)
    return json.loads(message) if isinstance(message, str) else message


def media(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + body


def test_a_stream_crosses_processes_as_raw_bytes(redis_server: RedisServer) -> None:
    init, key1, key2 = media(INIT, b"header"), media(KEY, b"k1"), media(KEY, b"k2")
    big = media(DELTA, os.urandom(512 * 1024))  # any bytes, not text: not wrapped, not base64
    with chat_nodes(redis_server, 3) as ((_, a), (_, b), (_, c)):
        with stream_client(c) as early, ExitStack() as stack:  # C: waits, before a publisher
            assert event(early) == {"type": "viewing", "stream": "s", "live": False, "id": 1}
            with stream_client(a, "?role=publish") as publisher:
                assert event(publisher) == {"type": "publishing", "stream": "s"}
                for message in (init, key1, media(DELTA, b"d1")):
                    publisher.send(message)
                assert [event(early) for _ in range(3)] == [init, key1, media(DELTA, b"d1")]
                late = {}
                for name, port in (("a", a), ("b", b)):
                    ws = late[name] = stack.enter_context(stream_client(port))
                    viewing = event(ws)
                    assert (viewing["type"], viewing["live"]) == ("viewing", True)
                    assert [event(ws), event(ws)] == [init, key1]  # then the next key frame
                with stream_client(b, "?role=publish") as second:  # on B, whose viewer stays
                    with pytest.raises(ConnectionClosed) as refused:
                        event(second)
                    assert refused.value.rcvd is not None
                    assert refused.value.rcvd.code == 1008
                    assert refused.value.rcvd.reason == "this stream already has a publisher"
                for message in (media(DELTA, b"d2"), key2, big):
                    publisher.send(message)
                for ws in (early, *late.values()):
                    expected = [media(DELTA, b"d2"), key2, big] if ws is early else [key2, big]
                    assert [event(ws) for _ in expected] == expected
            for ws in (early, *late.values()):  # the publisher left, on process A
                assert event(ws) == {"type": "ended", "stream": "s"}
                with pytest.raises(ConnectionClosed) as ended:
                    event(ws)
                assert ended.value.rcvd is not None and ended.value.rcvd.code == STREAM_ENDED
        with stream_client(b, "?role=publish") as publisher:  # the stream is free again
            assert event(publisher) == {"type": "publishing", "stream": "s"}
