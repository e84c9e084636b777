"""spoc_sockets.uvicorn.WSProtocol over 127.0.0.1: a frame error waits for the messages
before it (their answers go out first), then fails the connection with its close code."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import MutableMapping
from typing import Any

import pytest

from spoc_sockets import ChannelServer, Connection, Router
from spoc_sockets.asgi import ASGIApp
from spoc_sockets.uvicorn import WSProtocol

from .behaviour.harness_asgi import run_uvicorn
from .behaviour.harness_net import wait_for
from .frames import client_frame, raw_upgrade, read_until_eof, server_frames

Message = MutableMapping[str, Any]

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA

#: a frame error after a valid message, and the close code it must get
ERRORS = {
    "reserved bit": (client_frame(TEXT, b"x", rsv=1), 1002),
    "reserved opcode": (client_frame(0x3), 1002),
    "continuation without a start": (client_frame(CONTINUATION, b"x"), 1002),
    "fragmented ping": (client_frame(PING, b"p", fin=False), 1002),
    "unmasked frame": (client_frame(TEXT, b"x", mask=False), 1002),
    "invalid UTF-8": (client_frame(TEXT, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"), 1007),
}


class Echo(ChannelServer):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def echo_app() -> ASGIApp:
    router = Router()
    router.add("/echo", Echo())
    return ASGIApp(router)


def exchange(port: int, frames: bytes) -> tuple[list[tuple[int, bytes]], float]:
    """Upgrade on /echo, send ``frames`` in one write, read until the server closes the
    TCP connection (bounded): the server's frames, and the seconds the close took."""
    sock, rest = raw_upgrade(port, "/echo", timeout=10.0)
    with sock:
        started = time.monotonic()
        sock.sendall(frames)
        data = read_until_eof(sock, rest)
        return server_frames(data), time.monotonic() - started


def close_code(frame: tuple[int, bytes]) -> int:
    assert frame[0] == CLOSE, frame
    return int.from_bytes(frame[1][:2], "big")


@pytest.mark.parametrize("error", sorted(ERRORS))
def test_a_frame_error_after_valid_messages_fails_the_connection_after_their_answers(
    error: str,
) -> None:
    bad, code = ERRORS[error]
    valid = client_frame(TEXT, "héllo".encode()) + client_frame(BINARY, b"\x00\x01")
    with run_uvicorn(echo_app()) as (port, _):
        frames, _ = exchange(port, valid + bad + client_frame(PING, b"after"))
    assert frames[:2] == [(TEXT, "héllo".encode()), (BINARY, b"\x00\x01")]
    assert close_code(frames[2]) == code
    assert frames[3:] == []  # nothing after the close: the ping after the error is not read


def test_a_frame_error_alone_gets_a_close_frame_with_its_code() -> None:
    with run_uvicorn(echo_app()) as (port, _):
        frames, _ = exchange(port, client_frame(0x3))
    assert [close_code(f) for f in frames] == [1002]


def test_fragments_of_a_message_before_the_error_are_dropped_with_it() -> None:
    start = client_frame(TEXT, b"part", fin=False)
    with run_uvicorn(echo_app()) as (port, _):
        frames, _ = exchange(port, start + client_frame(TEXT, b"not a continuation"))
    assert [close_code(f) for f in frames] == [1002]


class Recorder:
    """A plain ASGI application: accepts, keeps what ``receive()`` returns, and stops
    asking after ``reads`` messages (then returns 2 s later)."""

    def __init__(self, reads: int) -> None:
        self.reads = reads
        self.received: list[Message] = []

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while len(self.received) < self.reads:
            self.received.append(await receive())
            if self.received[-1]["type"] == "websocket.disconnect":
                return
        await asyncio.sleep(2)  # then returns: uvicorn waits for it when it stops


def test_the_application_receives_the_messages_then_a_disconnect_with_the_code() -> None:
    app = Recorder(reads=5)
    with run_uvicorn(app) as (port, _):
        frames, _ = exchange(port, client_frame(TEXT, b"one") + client_frame(TEXT, b"x", rsv=2))
        wait_for(lambda: len(app.received) == 2)
    assert app.received[0] == {"type": "websocket.receive", "text": "one"}
    assert app.received[1]["type"] == "websocket.disconnect"
    assert app.received[1]["code"] == 1002
    assert [close_code(f) for f in frames] == [1002]


class QuickProtocol(WSProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = 0.5


def test_an_application_that_stops_asking_sees_the_connection_failed_at_the_close_timeout() -> None:
    app = Recorder(reads=1)  # takes the first message, never asks for the second
    frames_in = client_frame(TEXT, b"one") + client_frame(TEXT, b"two") + client_frame(0x3)
    with run_uvicorn(app, ws=QuickProtocol) as (port, _):
        frames, took = exchange(port, frames_in)
    assert [close_code(f) for f in frames] == [1002]
    assert 0.4 <= took < 5
    assert app.received == [{"type": "websocket.receive", "text": "one"}]


def test_uvicorn_takes_the_protocol_by_its_import_string() -> None:
    with run_uvicorn(echo_app(), ws="spoc_sockets.uvicorn:WSProtocol") as (port, _):
        frames, _ = exchange(port, client_frame(TEXT, b"a") + client_frame(0x3))
    assert frames[0] == (TEXT, b"a")
    assert close_code(frames[1]) == 1002


def test_nothing_is_read_while_a_frame_error_waits_for_the_application() -> None:
    """A peer that floods behind its frame error while the application is busy gets
    nothing taken in: TCP pushes back, the flood stops at the kernel's buffers."""
    app = Recorder(reads=1)  # busy with the first message: never asks for the next
    chunk = b"\x00" * 2**20
    sent = 0
    with run_uvicorn(app, ws=SlowProtocol) as (port, _):
        sock, _ = raw_upgrade(port, "/echo", timeout=1.0)
        with sock, contextlib.suppress(OSError):  # a timeout, or the server's close
            sock.sendall(client_frame(TEXT, b"one") + client_frame(0x3))
            while sent < 256 * 2**20:
                sent += sock.send(chunk)
    assert sent < 32 * 2**20  # the kernel's buffers, not the whole flood
    assert app.received == [{"type": "websocket.receive", "text": "one"}]


class SlowProtocol(WSProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = 3.0
