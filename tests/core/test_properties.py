"""Properties of the core under arbitrary input splits, arbitrary bytes and churn."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from itertools import pairwise

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from spoc_sockets import ChannelServer, Connection, ConnectionState, Hub, Router
from spoc_sockets.testing import TestClient

from ..frames import upgrade_request
from .wire import Echo, Recorder, close_payload, frame, parse_answer, parse_frames

PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate\r\n"

# -- (a) a valid stream, split anywhere, means the same thing --------------------------------


@dataclass(frozen=True)
class Message:
    data: str | bytes
    cuts: tuple[int, ...]  # fragment boundaries inside the payload (bytes)
    ping_between: bool  # a ping between this message's fragments (or before it)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    data: str | bytes = draw(
        st.one_of(
            st.text(max_size=60),
            st.binary(max_size=300),
            st.builds(lambda n, c: c * n, st.integers(100, 70_000), st.sampled_from(["é", "a"])),
        )
    )
    size = len(data.encode() if isinstance(data, str) else data)
    cuts = draw(st.lists(st.integers(0, size), max_size=4, unique=True))
    return Message(data, tuple(sorted(cuts)), draw(st.booleans()))


def encode_stream(
    items: list[Message], close_code: int | None, compressed: bool
) -> tuple[bytes, list[str | bytes]]:
    stream = upgrade_request("/r", extra=DEFLATE if compressed else "")
    compressor = zlib.compressobj(wbits=-15)
    for item in items:
        payload = item.data.encode() if isinstance(item.data, str) else item.data
        opcode = 0x1 if isinstance(item.data, str) else 0x2
        if compressed:
            payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            assert payload.endswith(b"\x00\x00\xff\xff")
            payload = payload[:-4]
        bounds = [0, *[min(c, len(payload)) for c in item.cuts], len(payload)]
        pieces = [payload[a:b] for a, b in pairwise(bounds) if b >= a]
        if item.ping_between:
            stream += frame(0x9, b"before")
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            rsv = 4 if compressed and i == 0 else 0
            stream += frame(opcode if i == 0 else 0x0, piece, fin=last, rsv=rsv)
            if item.ping_between and i == 0:
                stream += frame(0x9, b"between")
    stream += frame(0x8, close_payload(close_code, "done" if close_code else ""))
    return stream, [item.data for item in items]


def run(stream: bytes, cuts: list[int], compressed: bool) -> tuple[object, ...]:
    recorder = Recorder(ping_interval=None, compression=compressed)
    router = Router()
    router.add("/r", recorder)
    hub = Hub(router)
    server = hub.open(0.0)
    out = bytearray()
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for a, b in pairwise(bounds):
        if b > a:
            server.receive_data(stream[a:b], 0.0)
            out += server.data_to_send(0.0)
    assert server.should_close
    assert router.upgraded == frozenset() and hub.connections == []
    return recorder.messages, recorder.closed, bytes(out) if not compressed else None


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[bytes, list[int], list[str | bytes], int | None, bool]:
    compressed = draw(st.booleans())
    items = draw(st.lists(messages(), max_size=6))
    code = draw(st.sampled_from([None, 1000, 1001, 3000, 4999]))
    stream, expected = encode_stream(items, code, compressed)
    cuts = draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))
    if draw(st.booleans()):  # every byte on its own, for small streams
        cuts = list(range(1, len(stream))) if len(stream) < 3000 else cuts
    return stream, cuts, expected, code, compressed


@PROPERTY
@given(split_streams())
def test_a_stream_split_anywhere_means_the_same(
    case: tuple[bytes, list[int], list[str | bytes], int | None, bool],
) -> None:
    stream, cuts, expected, code, compressed = case
    whole = run(stream, [], compressed)
    split = run(stream, cuts, compressed)
    assert split == whole
    messages, closed, _ = whole
    assert messages == expected
    assert closed == [(1005, "")] if code is None else closed == [(code, "done")]


# -- (b) arbitrary bytes never break the core ---------------------------------------------------

DOCUMENTED_STATUS = {400, 404, 405, 408, 426, 431, 503}
DOCUMENTED_CODES = {1000, 1002, 1007, 1009, 1011}
PEER_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


class Fussy(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        super().on_message(conn, message)
        if message in ("boom", b"boom"):
            raise RuntimeError("boom")
        conn.send(message)


def fuzz_router() -> tuple[Router, Fussy]:
    router = Router(max_request_size=1024, handshake_timeout=2.0)
    fussy = Fussy(
        max_message_size=1000,
        ping_interval=1.0,
        ping_timeout=1.0,
        close_timeout=1.0,
        compression=True,
    )
    router.add("/r", fussy)
    router.add("/t/{id}", Recorder(subprotocols=["a", "b"]))
    return router, fussy


frames_strategy = st.lists(
    st.one_of(
        st.builds(
            lambda code, reason: frame(0x8, close_payload(code, reason)),
            st.sampled_from([None, 1000, 1001, 1003, 1005, 1006, 2000, 3000, 4999, 5000]),
            st.sampled_from(["", "bye", "é"]),
        ),
        st.builds(
            lambda op, payload, fin, rsv: frame(op, payload, fin=fin, rsv=rsv),
            st.sampled_from([0x1, 0x1, 0x1, 0x2, 0x2, 0x2, 0x0, 0x9, 0xA, 0x8, 0x3]),
            st.one_of(
                st.binary(max_size=200),
                st.sampled_from(
                    [b"boom", "é".encode() * 3, b"\x03\xe8", b"\x03\xe8ok", b"x" * 1200]
                ),
                st.builds(
                    lambda c, r: struct.pack("!H", c) + r,
                    st.integers(0, 5000),
                    st.binary(max_size=5),
                ),
            ),
            st.booleans(),
            st.sampled_from([0] * 12 + [4, 2, 1]),
        ),
    ),
    max_size=8,
).map(b"".join)

garbage = st.one_of(
    st.binary(max_size=400),
    frames_strategy,
    frames_strategy,
    st.tuples(frames_strategy, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)))).map(
        lambda t: mutate(t[0], t[1])
    ),
)


def mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for position, value in changes:
        if buf:
            buf[position % len(buf)] = value
    return bytes(buf)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


def check_end(router: Router, hub: Hub, server: object, out: bytes) -> None:
    server.receive_data(b"", 1000.0)  # type: ignore[attr-defined]
    server.data_to_send(1000.0)  # type: ignore[attr-defined]
    assert server.state is ConnectionState.CLOSED  # type: ignore[attr-defined]
    assert router.upgraded == frozenset()
    assert hub.connections == []


@settings(PROPERTY, max_examples=400)
@given(
    data=garbage,
    cuts=st.lists(st.integers(0, 5000), max_size=6),
    ticks=st.lists(st.floats(0, 3), max_size=4),
    compressed=st.booleans(),
)
def test_arbitrary_bytes_after_the_handshake(
    data: bytes, cuts: list[int], ticks: list[float], compressed: bool
) -> None:
    router, fussy = fuzz_router()
    hub = Hub(router)
    server = hub.open(0.0)
    now = 0.0
    server.receive_data(upgrade_request("/r", extra=DEFLATE if compressed else ""), now)
    out = bytearray(server.data_to_send(now))
    assert parse_answer(bytes(out))[0].status == 101
    chunks = chunked(data, cuts)
    for i, chunk in enumerate(chunks):
        server.receive_data(chunk, now)
        out += server.data_to_send(now)
        if i < len(ticks):
            now += ticks[i]
            hub.handle_timeouts(now)
            server.handle_timeout(now)
            out += server.data_to_send(now)
    _, frames_out = parse_answer(bytes(out))
    closes = [f for f in parse_frames(frames_out) if f.opcode == 0x8]
    if closes:
        payload = closes[0].payload
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        event(f"close {code}")
        if code not in DOCUMENTED_CODES:
            # only an echo of the peer's own close frame may carry another code
            assert server.error is None
            assert fussy.closed and fussy.closed[0][0] == (1005 if code is None else code)
            assert code is None or code in PEER_CODES or 3000 <= code <= 4999
    else:
        event(f"no close frame, {server.state.value}")
        assert server.state is not ConnectionState.CONNECTING
        assert server.state is not ConnectionState.CLOSED or fussy.closed[0][0] == 1006
    check_end(router, hub, server, bytes(out))
    assert len(fussy.closed) == 1


def valid_request(path: str) -> bytes:
    return upgrade_request(path, extra="Sec-WebSocket-Protocol: b, a\r\nOrigin: http://o\r\n")


handshakes = st.one_of(
    st.binary(max_size=300),
    st.tuples(
        st.sampled_from([valid_request("/r"), valid_request("/t/1"), valid_request("/t/")]),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
    ).map(lambda t: mutate(t[0], t[1])),
    st.tuples(
        st.sampled_from([valid_request("/r"), valid_request("/t/1")]), st.integers(0, 200)
    ).map(lambda t: t[0][: t[1]]),
    st.text(
        alphabet="permessage-deflate;=, client_max_window_bits server_no_context_takeover 09158x",
        max_size=80,
    ).map(lambda v: upgrade_request("/r", extra=f"Sec-WebSocket-Extensions: {v}\r\n")),
)


@PROPERTY
@given(
    data=handshakes,
    cuts=st.lists(st.integers(0, 5000), max_size=6),
    wait=st.sampled_from([0.0, 1.0, 2.0, 5.0]),
    tail=st.sampled_from([b"", frame(0x1, b"hi"), b"\x00" * 3000]),
)
def test_arbitrary_bytes_as_the_handshake(
    data: bytes, cuts: list[int], wait: float, tail: bytes
) -> None:
    router, _ = fuzz_router()
    hub = Hub(router)
    server = hub.open(0.0)
    out = bytearray()
    for chunk in chunked(data + tail, cuts):
        server.receive_data(chunk, 0.0)
        out += server.data_to_send(0.0)
    hub.handle_timeouts(wait)
    out += server.data_to_send(wait)
    if out:
        answer, _ = parse_answer(bytes(out))
        assert answer.status in DOCUMENTED_STATUS | {101}, answer
        event(f"status {answer.status}")
        if answer.status != 101:
            assert server.should_close
    else:
        # nothing said yet: still waiting, or dropped silently
        assert server.state in (ConnectionState.CONNECTING, ConnectionState.CLOSED)
        event(f"silent, {server.state.value}")
        if server.state is ConnectionState.CLOSED:
            assert wait >= 2.0 and not data + tail
    check_end(router, hub, server, bytes(out))


# -- (c) churn leaves nothing behind --------------------------------------------------------------


def test_ten_thousand_connect_close_cycles_leave_nothing() -> None:
    class Counting(ChannelServer):
        ping_interval = None

        def __init__(self) -> None:
            super().__init__()
            self.opened = 0
            self.closed: dict[int, int] = {}

        def on_connect(self, conn: Connection) -> None:
            self.opened += 1

        def on_close(self, conn: Connection, code: int, reason: str) -> None:
            self.closed[code] = self.closed.get(code, 0) + 1

    router = Router()
    counting = router.add("/c", Counting())
    router.add("/echo", Echo(ping_interval=None))
    with TestClient(router) as client:
        for i in range(10_000):
            ws = client.connect("/c" if i % 100 else "/echo")
            if i % 100 == 0:
                ws.send("ping")
                assert ws.receive() == "ping"
            if i % 2:
                ws.abort()
            else:
                ws.close()
                assert ws.close_code == 1000
            if i % 1000 == 0:
                assert router.upgraded == frozenset()
        assert router.upgraded == frozenset()
        assert client.hub.connections == []
        assert counting.clients == frozenset()
    assert counting.opened == 9_900
    assert counting.closed == {1000: 4_900, 1006: 5_000}  # the /echo hundred were even
