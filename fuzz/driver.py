"""Drive one :class:`~spoc_sockets.ServerConnection` with arbitrary bytes and virtual time,
and check the core's invariants after every step and at the end.

An input is ``[split][step][flags] + stream``:

* ``split``: the stream is fed in chunks of ``split`` bytes (0: all at once), so every
  split point of the stream is reachable (at most ``MAX_CHUNKS`` chunks: a longer
  stream gets longer chunks);
* ``step``: virtual seconds between chunks, in eighths (``255`` is almost 32 s: past the
  handshake, ping and close deadlines);
* ``flags``: bit 0, the peer never reads (``pause_writing`` and never resume); the
  frame harness uses bits 1 and 2 to choose its handshake;
* ``stream``: the bytes the peer sends.

:func:`run` raises :class:`AssertionError` when an invariant breaks; everything it
checks is listed in ``fuzz/README.md``. It needs only the standard library and
spoc_sockets: the tests replay the seed corpus through it without atheris.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from spoc_sockets import (
    ChannelServer,
    Connection,
    ConnectionState,
    Deferred,
    Hub,
    Reject,
    Request,
    Response,
    Router,
    ServerConnection,
)

ORDER = {
    ConnectionState.CONNECTING: 0,
    ConnectionState.OPEN: 1,
    ConnectionState.CLOSING: 2,
    ConnectionState.CLOSED: 3,
}
MAX_MESSAGE_SIZE = 64 * 1024  # bytes, per message (after inflation)
MAX_BUFFERED = 256 * 1024  # bytes of output kept for a peer that never reads
#: What the server may write in answer to N bytes: an echo of each message (compressed
#: again when it came compressed), pongs, one HTTP answer, keepalive pings and one close.
OUTPUT_FACTOR = 2
OUTPUT_SLACK = 16 * 1024
MAX_STEPS = 10_000  # virtual-time steps to reach the end: more is a hang
MAX_CHUNKS = 256  # pieces an input is cut into, at most (a long input gets longer pieces)


class Echo(ChannelServer):
    """Echoes; ``close NNNN`` closes with that code; ``all`` broadcasts."""

    max_message_size = MAX_MESSAGE_SIZE
    max_buffered_amount = MAX_BUFFERED
    ping_interval = 20.0
    ping_timeout = 20.0
    close_timeout = 5.0

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("close "):
            code = message[6:]
            conn.close(int(code) if code.isdigit() and 3000 <= int(code) < 5000 else 1000)
        elif message == "all":
            self.broadcast(message)
        else:
            conn.send(message)


class Guarded(Echo):
    """Origins, subprotocols, a path parameter and a token."""

    origins = ("https://ok.example", None)
    subprotocols = ("chat", "superchat")

    def authenticate(self, request: Request) -> object:
        token = request.query.get("token")
        if token != "t":
            raise Reject(401, "token required")
        return request.path_params.get("room")


class Later(Echo):
    """Decides after the request, as an authentication with I/O would."""

    def authenticate(self, request: Request) -> object:
        decision = Deferred()
        if request.query.get("token") == "t":
            decision.accept("later")
        elif "token" in request.query:
            decision.reject(403, "no")
        return decision  # no token: undecided until the handshake deadline


def make_router() -> Router:
    router = Router(max_request_size=4096, handshake_timeout=10.0)
    router.add("/echo", Echo(compression=True))
    router.add("/plain", Echo())
    router.add("/rooms/{room}", Guarded(compression=True))
    router.add("/later", Later())
    router.add_http("/health", lambda request: Response(200, "ok\n"))
    return router


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


_errors = _Errors()


@dataclass
class Options:
    split: int
    step: float
    paused: bool
    flags: int
    stream: bytes

    @classmethod
    def parse(cls, data: bytes) -> Options:
        head = data[:3].ljust(3, b"\x00")
        return cls(head[0], head[1] / 8, bool(head[2] & 1), head[2], data[3:])


class Run:
    """One connection's life under a hub; every step checks the invariants."""

    def __init__(self, router: Router, paused: bool) -> None:
        self.router = router
        self.hub = Hub(router)
        self.now = 0.0
        self.server: ServerConnection = self.hub.open(self.now, peer=("127.0.0.1", 4242))
        self.state = self.server.state
        self.received = 0
        self.written = 0
        if paused:
            self.server.pause_writing()

    def check(self) -> None:
        assert not _errors.messages, _errors.messages
        state = self.server.state
        assert ORDER[state] >= ORDER[self.state], f"state went back: {self.state} -> {state}"
        self.state = state
        assert self.server.buffered_amount <= MAX_BUFFERED + MAX_MESSAGE_SIZE + 4096, (
            f"{self.server.buffered_amount} bytes buffered"
        )
        assert len(self.router.upgraded) <= 1
        assert len(self.hub.connections) <= 1
        if state is ConnectionState.CLOSED:
            assert self.server.should_close
            assert not self.router.upgraded, "a closed connection is still upgraded"
            assert not self.hub.connections, "a closed connection is still in the hub"
        limit = OUTPUT_FACTOR * self.received + OUTPUT_SLACK
        assert self.written <= limit, f"{self.written} bytes written for {self.received} read"

    def flush(self) -> None:
        for conn in self.hub.take_pending():
            assert conn is self.server
        self.written += len(self.server.data_to_send(self.now))
        self.check()

    def feed(self, chunk: bytes) -> None:
        closed, written = self.server.should_close, self.written
        self.received += len(chunk)
        self.server.receive_data(chunk, self.now)
        self.flush()
        assert not closed or self.written == written, "output after the connection closed"

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.hub.handle_timeouts(self.now)
        self.flush()

    def finish(self) -> None:
        """The peer goes away; every deadline runs; nothing may be left."""
        self.feed(b"")
        for _ in range(MAX_STEPS):
            deadline = self.hub.next_deadline()
            if deadline is None:
                break
            self.advance(max(deadline - self.now, 0.0))
        else:
            raise AssertionError(f"deadlines still pending after {MAX_STEPS} steps")
        assert self.server.should_close, f"not closed at the end: {self.server!r}"
        assert self.hub.next_deadline() is None
        self.check()


def run(data: bytes, prefix: bytes = b"") -> None:
    """Feed ``prefix`` then the input's stream, as its options say; check everything."""
    options = Options.parse(data)
    _errors.messages.clear()
    logger = logging.getLogger("spoc_sockets")
    logger.addHandler(_errors)  # an error the core logged (and swallowed) is a finding
    try:
        session = Run(make_router(), options.paused)
        stream = prefix + options.stream
        split = max(options.split or len(stream), -(-len(stream) // MAX_CHUNKS), 1)
        for start in range(0, len(stream), split):
            session.feed(stream[start : start + split])
            if options.step:
                session.advance(options.step)
        session.finish()
    finally:
        logger.removeHandler(_errors)


KEY = "dGhlIHNhbXBsZSBub25jZQ=="
DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
TARGETS = ("/echo", "/plain", "/rooms/r?token=t", "/echo")  # the last without deflate


def upgrade(flags: int) -> bytes:
    """A valid upgrade request for the frame harness; ``flags`` bits 1-2 pick the
    channel (with or without permessage-deflate offered)."""
    target = TARGETS[(flags >> 1) & 3]
    extension = "" if (flags >> 1) & 3 == 3 else DEFLATE
    return (
        f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: chat\r\n{extension}\r\n"
    ).encode()
