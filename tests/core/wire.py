"""Drive a ServerConnection by hand with raw bytes, and read what it writes."""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from spoc_sockets import ChannelServer, Connection, Hub, Router, ServerConnection
from spoc_sockets._session import CLOSED, Action, ActionQueue, Session
from spoc_sockets.channel import Spawn
from spoc_sockets.request import Request

from ..frames import upgrade_request

MASK = b"\x01\x02\x03\x04"


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bytes = MASK
) -> bytes:
    """A masked client frame, with a fixed mask (deterministic bytes)."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_payload(code: int | None, reason: str = "") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes


def parse_frames(data: bytes) -> list[Frame]:
    """Server frames (unmasked) in ``data``; an incomplete tail is ignored."""
    frames = []
    while len(data) >= 2:
        fin, rsv, opcode = bool(data[0] & 0x80), (data[0] >> 4) & 7, data[0] & 0x0F
        assert not data[1] & 0x80, "a server frame is never masked"
        n, start = data[1] & 0x7F, 2
        if n == 126:
            n, start = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < start + n:
            break
        frames.append(Frame(fin, rsv, opcode, data[start : start + n]))
        data = data[start + n :]
    return frames


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def parse_answer(data: bytes) -> tuple[Answer, bytes]:
    """The HTTP response at the start of ``data``, and the bytes after it."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP response in {data[:100]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    return Answer(status, headers, rest[:length]), rest[length:]  # type: ignore[arg-type]


class Peer:
    """One transport to a hub's ServerConnection, driven with raw bytes and a fake clock."""

    def __init__(
        self,
        router: Router,
        *,
        hub: Hub | None = None,
        now: float = 0.0,
        transport: Hashable | None = None,
        peer: tuple[str, int] | None = None,
    ) -> None:
        self.router = router
        self.hub = hub if hub is not None else Hub(router)
        self.now = now
        self.server: ServerConnection = self.hub.open(now, transport=transport, peer=peer)
        self.out = bytearray()

    def send(self, data: bytes) -> None:
        self.server.receive_data(data, self.now)
        self.flush()

    def flush(self) -> None:
        """Take the output, giving the connection as many turns as its input needs."""
        self.out += self.server.data_to_send(self.now)
        while self.server.input_paused:
            self.out += self.server.data_to_send(self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.hub.handle_timeouts(self.now)
        self.flush()

    def eof(self) -> None:
        self.send(b"")

    def handshake(self, path: str = "/echo", **kwargs: object) -> Connection:
        self.send(upgrade_request(path, **kwargs))  # type: ignore[arg-type]
        answer, _ = parse_answer(bytes(self.out))
        assert answer.status == 101, answer
        assert self.server.connection is not None
        return self.server.connection

    @property
    def answer(self) -> Answer:
        return parse_answer(bytes(self.out))[0]

    @property
    def frames(self) -> list[Frame]:
        return parse_frames(parse_answer(bytes(self.out))[1])

    @property
    def close(self) -> tuple[int | None, str] | None:
        """The (code, reason) of the first close frame the server sent, or None."""
        for f in self.frames:
            if f.opcode == 0x8:
                if len(f.payload) < 2:
                    return None, ""
                return struct.unpack("!H", f.payload[:2])[0], f.payload[2:].decode()
        return None

    @property
    def close_code(self) -> int | None:
        close = self.close
        return None if close is None else close[0]


class Messages:
    """A :class:`Session` on an :class:`ActionQueue`, driven as the ASGI adapter drives
    it: the session decides, the queue hands each decision over as an action."""

    def __init__(
        self,
        router: Router,
        request: Request,
        now: float,
        wakeup: Callable[[], None] = lambda: None,
        *,
        refusing: bool = False,
        spawn: Spawn | None = None,
    ) -> None:
        self.queue = ActionQueue(wakeup)
        self.session = Session(router, now, self.queue, peer=request.peer, spawn=spawn)
        self.session.start(request, now, refusing=refusing)

    def actions(self, now: float) -> list[Action]:
        """The session's turn, then what the adapter must send, in order."""
        self.session.turn(now)
        return self.queue.take()

    def delivered(self, actions: list[Action]) -> None:
        self.queue.delivered(actions)

    @property
    def done(self) -> bool:
        return self.session.state is CLOSED

    def __getattr__(self, name: str) -> Any:
        """The rest is the session's: ``receive``, ``disconnected``, ``state``..."""
        return getattr(self.session, name)


class Recorder(ChannelServer):
    """Remembers every message and how each connection ended."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.messages: list[str | bytes] = []
        self.closed: list[tuple[int, str]] = []
        self.connected: list[Connection] = []

    def on_connect(self, conn: Connection) -> None:
        self.connected.append(conn)

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        self.messages.append(message)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append((code, reason))


class Echo(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        super().on_message(conn, message)
        conn.send(message)


def router_with(path: str = "/echo", channel: ChannelServer | None = None, **kw: object) -> Router:
    router = Router(**kw)  # type: ignore[arg-type]
    router.add(path, channel if channel is not None else Echo())
    return router
