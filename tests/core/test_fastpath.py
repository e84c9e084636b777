"""The input fast path (``Router(fast_path=True)``) against wsproto reading every frame.

The same random streams (valid and invalid frames, every opcode, RSV bits, unmasked and
oddly encoded headers, fragments with control frames between them, bad UTF-8, lengths
past the limits), split anywhere and fed with the clock moving, must give the same
messages, the same close codes and reasons, the same bytes out and the same state.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from itertools import pairwise
from typing import NoReturn

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection
from wsproto.frame_protocol import XorMaskerSimple

from spoc_sockets import ChannelServer, Hub, Router, UsageError, _fastpath
from spoc_sockets._fastpath import (
    ASSEMBLE_FROM,
    PROGRESS,
    RESERVE,
    UNMASK_LANES_FROM,
    FrameReader,
    unmask,
)

from ..frames import upgrade_request
from .test_properties import DEFLATE, PROPERTY
from .wire import Echo, Peer, parse_answer

EQUIVALENCE = settings(PROPERTY, max_examples=1200)

# -- random streams --------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    mask: bytes | None = b"\x00\x00\x00\x00"  # None: unmasked
    wide: int = 0  # 0: the shortest length encoding; 2 or 8: that many length bytes

    def encode(self) -> bytes:
        n, bit = len(self.payload), 0x80 if self.mask is not None else 0
        head = bytes([(0x80 if self.fin else 0) | self.rsv << 4 | self.opcode])
        if self.wide == 8 or n >= 65536:
            head += bytes([bit | 127]) + struct.pack("!Q", n)
        elif self.wide == 2 or n >= 126:
            head += bytes([bit | 126]) + struct.pack("!H", n)
        else:
            head += bytes([bit | n])
        if self.mask is None:
            return head + self.payload
        return head + self.mask + bytes(XorMaskerSimple(self.mask).process(bytearray(self.payload)))


payloads = st.one_of(
    st.text(max_size=30).map(str.encode),  # valid UTF-8
    st.binary(max_size=40),  # often invalid UTF-8
    st.text(min_size=1, max_size=10).map(lambda t: t.encode()[:-1]),  # maybe a cut character
    st.builds(lambda n, c: c * n, st.integers(100, 300), st.sampled_from([b"a", "é".encode()])),
    st.builds(lambda n: b"b" * n, st.sampled_from([65535, 65536, 70_000])),
)
close_payloads = st.one_of(
    st.just(b""),
    st.builds(
        lambda code, reason: struct.pack("!H", code) + reason,
        st.sampled_from([1000, 1001, 1002, 1005, 1006, 1011, 999, 2999, 3000, 4999, 5000]),
        st.one_of(st.text(max_size=10).map(str.encode), st.just(b"\xff")),
    ),
    st.binary(max_size=3),
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    opcode = draw(st.sampled_from([0x1, 0x2, 0x1, 0x2, 0x0, 0x8, 0x9, 0xA, 0x3, 0xB]))
    payload = draw(close_payloads if opcode == 0x8 else payloads)
    if opcode >= 0x8 and draw(st.integers(0, 9)):
        payload = payload[:125]
    odd = draw(st.integers(0, 11))  # mostly a well-formed frame
    return Frame(
        opcode,
        payload,
        fin=odd != 1 and (opcode >= 0x8 or draw(st.integers(0, 3)) > 0),
        rsv=draw(st.integers(1, 7)) if odd == 2 else 0,
        mask=None if odd == 3 else draw(st.binary(min_size=4, max_size=4)),
        wide=draw(st.sampled_from([2, 8])) if odd == 4 else 0,
    )


@dataclass(frozen=True)
class Stream:
    data: bytes
    cuts: tuple[int, ...]  # receive_data boundaries
    ticks: tuple[float, ...]  # seconds passing before each piece
    eof: bool
    options: dict[str, int | None]


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    items = draw(st.lists(frames(), max_size=8))
    data = b"".join(item.encode() for item in items)
    if draw(st.integers(0, 9)) == 0:  # a header that announces more than ever comes
        data += bytes([0x82, 0xFF]) + struct.pack("!Q", draw(st.sampled_from([2**20, 2**62])))
        data += b"\x00\x00\x00\x00" + b"x" * draw(st.integers(0, 300))
    if draw(st.integers(0, 3)) == 0:  # the peer stops anywhere, mid-frame too
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()) and len(data) < 400:
        cuts = tuple(range(1, len(data)))  # byte by byte
    else:
        cuts = tuple(sorted(set(draw(st.lists(st.integers(1, max(1, len(data))), max_size=8)))))
    ticks = tuple(draw(st.lists(st.sampled_from([0.0, 0.0, 2.0, 7.0]), max_size=len(cuts) + 1)))
    options = {
        "max_message_size": draw(st.sampled_from([None, 20, 200, 2**20])),
        "max_fragments": draw(st.sampled_from([None, 1, 2, 1024])),
        "idle_timeout": draw(st.sampled_from([None, 5])),
        "max_control_rate": draw(st.sampled_from([None, 10])),
    }
    return Stream(data, cuts, ticks, draw(st.booleans()), options)


# -- the two connections ---------------------------------------------------------------------


@dataclass
class Outcome:
    messages: list[str | bytes]
    closed: list[tuple[int, str]]
    out: bytes
    written: list[int]  # how much was out after each piece: answers come as early
    state: str
    error: str | None
    counters: tuple[int, int] | None


def run(stream: Stream, fast_path: bool, *, extra: str = "") -> Outcome:
    channel = Echo(ping_interval=None, **stream.options)
    router = Router(fast_path=fast_path)
    router.add("/r", channel)
    peer = Peer(router)
    peer.send(upgrade_request("/r", extra=extra))
    assert parse_answer(bytes(peer.out))[0].status == 101
    conn = peer.server.connection
    assert conn is not None
    bounds = (0, *stream.cuts, len(stream.data))
    written = []
    for i, (start, end) in enumerate(pairwise(bounds)):
        if i < len(stream.ticks) and stream.ticks[i]:
            peer.advance(stream.ticks[i])
        if end > start:
            peer.send(stream.data[start:end])
        written.append(len(peer.out))
    if stream.eof:
        peer.eof()
    return Outcome(
        channel.messages,
        channel.closed,
        bytes(peer.out),
        written,
        peer.server.state.value,
        None if peer.server.error is None else str(peer.server.error),
        (conn.messages_in, conn.bytes_in),
    )


@EQUIVALENCE
@given(streams())
def test_the_fast_path_answers_as_wsproto_does(stream: Stream) -> None:
    assert run(stream, fast_path=True) == run(stream, fast_path=False)


@settings(EQUIVALENCE, max_examples=30)
@given(streams())
def test_a_compressed_connection_reads_through_wsproto(stream: Stream) -> None:
    assert run(stream, True, extra=DEFLATE) == run(stream, False, extra=DEFLATE)


# -- the cases that matter most, by hand ------------------------------------------------------


def simple(opcode: int, payload: bytes, mask: bytes = b"\x0f\xf0\x55\xaa") -> bytes:
    return Frame(opcode, payload, mask=mask).encode()


@pytest.mark.parametrize(
    "data",
    [
        simple(0x1, "héllo".encode()) * 3,  # text, decoded by the fast path
        simple(0x2, os.urandom(5000)),  # binary, unmasked by lanes
        simple(0x1, b"ok\xff") + simple(0x1, b"never"),  # 1007, wsproto's reason
        simple(0x2, b"x" * 300),  # past max_message_size: 1009
        Frame(0x1, b"frag", fin=False).encode() + simple(0x9, b"p") + Frame(0x0, b"!").encode(),
        simple(0x8, struct.pack("!H", 1000) + b"bye") + simple(0x1, b"after the close"),
        Frame(0x2, b"unmasked", mask=None).encode(),
        Frame(0x2, b"x" * 110, wide=2).encode(),  # lengths not in their shortest form: 1002
        Frame(0x1, b"x" * 200, wide=8).encode(),
        Frame(0x1, b"rsv", rsv=4).encode(),
        simple(0x1, b"m") * 100 + simple(0x9, b"p") + simple(0x1, b"\xff"),  # past a turn
        Frame(0x2, b"", mask=None).encode(),  # a whole frame in two bytes: 1002 at once
        # a new message inside a fragmented one (a control frame between): 1002
        Frame(0x1, b"frag", fin=False).encode() + simple(0x9, b"p") + simple(0x1, b"new"),
        Frame(0x2, b"frag", fin=False).encode() + simple(0x2, b"new"),
    ],
)
def test_known_streams_split_everywhere(data: bytes) -> None:
    for cut in range(0, len(data), max(1, len(data) // 50)):
        stream = Stream(data, (cut,) if cut else (), (), True, {"max_message_size": 200})
        fast, reference = run(stream, True), run(stream, False)
        assert fast == reference, cut


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 65537])
@pytest.mark.parametrize("opcode", [0x1, 0x2])
@pytest.mark.parametrize("limit", [None, 2**20])
def test_a_frame_of_every_length_encoding_is_read_once_it_is_whole(
    opcode: int, size: int, limit: int | None
) -> None:
    """At each edge of the 7-bit, 16-bit and 64-bit length fields, a frame alone, whole
    or in three pieces (its header, most of it, its last byte), gives its message with
    its last byte, as wsproto gives it."""
    payload = b"v" * size
    data = simple(opcode, payload)
    for cuts in ((), (len(data) - size, len(data) - 1)):
        stream = Stream(
            data, tuple(cut for cut in cuts if cut > 0), (), False, {"max_message_size": limit}
        )
        outcome = run(stream, True)
        assert outcome.messages == [payload.decode() if opcode == 0x1 else payload]
        assert outcome == run(stream, False)


def test_the_limit_closes_before_a_huge_frame_is_buffered() -> None:
    """A frame announcing 2**62 bytes closes with 1009 once 200 bytes came, holding no
    more than those."""
    head = bytes([0x82, 0xFF]) + struct.pack("!Q", 2**62) + b"\x00\x00\x00\x00"
    stream = Stream(
        head + b"x" * 150 + b"y" * 100, (len(head) + 150,), (), False, {"max_message_size": 200}
    )
    outcome = run(stream, True)
    assert outcome.closed == [] and outcome.state == "closing"
    assert outcome == run(stream, False)
    assert struct.unpack("!H", outcome.out.rsplit(b"\x88", 1)[1][1:3])[0] == 1009


@pytest.mark.parametrize("length", [2**63, 2**64 - 1])
@pytest.mark.parametrize("limit", [None, 2**20])
def test_a_length_with_its_top_bit_set_is_1002_with_or_without_a_limit(
    length: int, limit: int | None
) -> None:
    """RFC 6455 section 5.2: the most significant bit of the 64-bit length is 0."""
    head = bytes([0x82, 0xFF]) + struct.pack("!Q", length) + b"\x00\x00\x00\x00"
    stream = Stream(head + b"x" * 10, (), (), False, {"max_message_size": limit})
    outcome = run(stream, True)
    assert outcome.closed == [(1002, "8-byte payload length with non-zero MSB")]
    assert outcome == run(stream, False)


def test_a_frame_just_past_the_limit_closes_as_the_limit_is_crossed() -> None:
    """The peer stops after 201 of 230 bytes: 1009 all the same, as wsproto's partial
    messages give it."""
    data = simple(0x2, b"x" * 230)[:-29]
    stream = Stream(data, (10, 100), (), True, {"max_message_size": 200})
    outcome = run(stream, True)
    assert outcome.closed == [(1009, "message over 200 bytes")]
    assert outcome == run(stream, False)


def test_a_trickled_frame_keeps_the_connection_from_being_idle() -> None:
    """Big binary frames arriving slowly are input: idle_timeout does not fire under
    them (the second one's pieces are smaller than the first one's)."""
    first, second = simple(0x2, b"z" * 1000), simple(0x2, b"y" * 300)
    cuts = (*range(100, len(first), 300), *range(len(first) + 60, len(first + second), 60))
    stream = Stream(first + second, cuts, (4.0,) * (len(cuts) + 1), False, {"idle_timeout": 5})
    outcome = run(stream, True)
    assert outcome.messages == [b"z" * 1000, b"y" * 300] and outcome.state == "open"
    assert outcome == run(stream, False)


@pytest.mark.parametrize("size", [1, ASSEMBLE_FROM])  # decoded at once, or assembled
def test_the_first_payload_byte_of_the_next_frame_keeps_the_connection_from_being_idle(
    size: int,
) -> None:
    """After a whole binary frame, the next one's header and first payload byte are input
    too: idle_timeout counts from them."""
    first, second = simple(0x2, b"a" * size), simple(0x2, b"z" * 300)
    cuts = (len(first) // 2, len(first), len(first) + len(second) - 299)
    options = {"idle_timeout": 5, "max_message_size": 2**20}
    stream = Stream(first + second, cuts, (0.0, 0.0, 4.0, 4.0), False, options)
    outcome = run(stream, True)
    assert outcome.messages == [b"a" * size, b"z" * 300] and outcome.state == "open"
    assert outcome == run(stream, False)


def test_nothing_is_read_after_wsproto_gives_a_close_event() -> None:
    ws = WSConnection(ConnectionType.SERVER)
    reader = FrameReader(ws, None)
    reader.receive_data(simple(0x8, struct.pack("!H", 1000)) + simple(0x1, b"late"))
    events = list(reader.events())
    assert [type(event) for event in events] == [CloseConnection]
    reader.receive_data(simple(0x2, b"later"))
    assert list(reader.events()) == []


def test_the_reader_keeps_no_view_of_a_buffer_its_caller_reuses() -> None:
    reader = FrameReader(WSConnection(ConnectionType.SERVER), None)
    data = simple(0x2, b"abcdef")
    buffer = bytearray(data[:-2])
    reader.receive_data(buffer)  # type: ignore[arg-type]
    assert list(reader.events()) == [PROGRESS]
    buffer[:] = bytes(len(buffer))
    reader.receive_data(data[-2:])
    assert list(reader.events()) == [b"abcdef"]


def test_the_reader_holds_no_frame_it_has_read_while_it_waits() -> None:
    reader = FrameReader(WSConnection(ConnectionType.SERVER), None)
    reader.receive_data(simple(0x2, b"m" * 100_000) + simple(0x2, b"next")[:3])
    assert list(reader.events()) == [b"m" * 100_000]
    assert len(reader._buf) == 3  # the start of the next frame, nothing more


def test_a_frame_trickled_byte_by_byte_grows_one_buffer_in_place() -> None:
    """Each piece is appended to the same buffer: a frame sent a byte at a time costs
    its size once, not once per byte (a new buffer per piece would copy it every time)."""
    reader = FrameReader(WSConnection(ConnectionType.SERVER), None)
    data = simple(0x2, b"t" * 1000)
    reader.receive_data(data[:10])
    assert list(reader.events()) == [PROGRESS]
    reader.receive_data(data[10:11])
    assert list(reader.events()) == [PROGRESS]
    buffer = reader._buf
    for at in range(11, len(data) - 1):
        reader.receive_data(data[at : at + 1])
        assert list(reader.events()) == [PROGRESS]
        assert reader._buf is buffer, at
    reader.receive_data(data[-1:])
    assert list(reader.events()) == [b"t" * 1000]


def test_large_binary_frames_assembled_as_they_come_read_as_wsproto_reads_them() -> None:
    data = (
        simple(0x2, os.urandom(70_000))
        + simple(0x1, b"between")
        + simple(0x2, os.urandom(ASSEMBLE_FROM), mask=os.urandom(4))
        + simple(0x9, b"ping")
        + simple(0x2, os.urandom(ASSEMBLE_FROM + 1))[:-5]  # the peer stops in the middle
    )
    for cut in (*range(1, 40), *range(40, len(data), 997)):
        cuts = tuple(range(cut, len(data), 20_000 + cut))
        stream = Stream(data, cuts, (), True, {"max_message_size": 2**20})
        assert run(stream, True) == run(stream, False), cut


def assembling_reader(limit: int | None) -> FrameReader:
    return FrameReader(WSConnection(ConnectionType.SERVER), limit)


def test_a_large_binary_frame_is_unmasked_into_its_message_as_it_comes() -> None:
    """No gathering buffer: each piece goes into the message, the input buffer holds
    only what follows the frame."""
    payload = os.urandom(2**20)
    data = simple(0x2, payload, mask=os.urandom(4)) + simple(0x1, b"next")
    reader = assembling_reader(2**20)
    events: list[object] = []
    for start in range(0, len(data), 65536):
        reader.receive_data(data[start : start + 65536])
        events += reader.events()
        assert len(reader._buf) - reader._pos <= len(simple(0x1, b"next"))
    assert events == [PROGRESS] * 16 + [payload, "next"]
    assert reader._assembling is None and reader._buf == b""


def test_without_a_limit_a_large_frame_is_gathered_as_it_comes() -> None:
    """No message size to bound it: nothing is allocated before the bytes are here."""
    payload = os.urandom(ASSEMBLE_FROM * 2)
    data = simple(0x2, payload)
    reader = assembling_reader(None)
    reader.receive_data(data[:1000])
    assert list(reader.events()) == [PROGRESS]
    assert reader._assembling is None and len(reader._buf) == 1000
    reader.receive_data(data[1000:])
    assert list(reader.events()) == [payload]


def test_an_assembler_is_made_once_enough_of_its_frame_is_here() -> None:
    """A header and a few bytes never make the server reserve the announced payload:
    the frame is gathered until a RESERVE-th of it came, then assembled."""
    payload = os.urandom(2**20)
    data = simple(0x2, payload)
    reader = assembling_reader(2**20)
    reader.receive_data(data[:15])  # the 14-byte header and one byte
    assert list(reader.events()) == [PROGRESS]
    assert reader._assembling is None
    needed = 14 + 2**20 // RESERVE
    reader.receive_data(data[15:needed])
    assert list(reader.events()) == [PROGRESS]
    assert reader._assembling is not None and reader._buf == b""
    reader.receive_data(data[needed:])
    assert list(reader.events()) == [payload]


@pytest.mark.parametrize(("size", "assembled"), [(ASSEMBLE_FROM - 1, False), (ASSEMBLE_FROM, True)])
def test_binary_frames_are_assembled_from_assemble_from_bytes_on(
    size: int, assembled: bool
) -> None:
    payload = os.urandom(size)
    data = simple(0x2, payload)
    header = len(data) - size
    reader = assembling_reader(2**20)
    reader.receive_data(data[: header + -(-size // RESERVE) - 1])  # a byte short of a
    assert list(reader.events()) == [PROGRESS]  # RESERVE-th of it: gathered
    assert reader._assembling is None
    reader.receive_data(data[header + -(-size // RESERVE) - 1 : header + -(-size // RESERVE)])
    assert list(reader.events()) == [PROGRESS]
    assert (reader._assembling is not None) is assembled
    reader.receive_data(data[header + -(-size // RESERVE) :])
    assert list(reader.events()) == [payload]


def test_a_frame_too_long_to_reserve_reads_as_wsproto_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A length no buffer can have (past the platform's sizes) under a limit just as
    large, even where an assembler would be made at once: the frame is gathered, as
    wsproto gathers it, with no internal error."""
    monkeypatch.setattr(_fastpath, "RESERVE", 2**64)
    head = bytes([0x82, 0xFF]) + struct.pack("!Q", 2**63 - 1) + b"\x00\x00\x00\x00"
    stream = Stream(head + b"x" * 100, (len(head) + 1,), (), False, {"max_message_size": 2**64})
    outcome = run(stream, True)
    assert outcome.state == "open" and outcome.error is None
    assert outcome == run(stream, False)


def test_input_that_came_while_the_turn_was_over_is_read_at_the_next_turn() -> None:
    """The turn's budget ends inside a frame handed to wsproto; its rest and another
    frame arrive before the next turn: both are read then, as wsproto reads them."""
    outcomes = []
    for fast_path in (True, False):
        echo = Echo()
        router = Router(fast_path=fast_path)
        router.add("/echo", echo)
        peer = Peer(router)
        peer.handshake()
        longer = simple(0x1, b"t" * 300)
        peer.server.receive_data(simple(0x1, b"m") * 63 + longer[:100], peer.now)
        assert peer.server.input_paused  # 64 events: the turn's budget
        peer.server.receive_data(longer[100:] + simple(0x1, b"last"), peer.now)
        peer.flush()
        outcomes.append(echo.messages)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][-2:] == ["t" * 300, "last"] and len(outcomes[0]) == 65


@pytest.mark.parametrize("failure", [MemoryError, OverflowError])
def test_a_frame_whose_buffer_cannot_be_had_is_gathered(
    monkeypatch: pytest.MonkeyPatch, failure: type[Exception]
) -> None:
    """No memory for the payload, or a length past the platform's sizes (what the
    compiled assembler raises for each): the frame is gathered instead."""

    def no_buffer(length: int, key: bytes) -> NoReturn:
        raise failure

    monkeypatch.setattr(_fastpath, "Assembler", no_buffer)
    payload = os.urandom(ASSEMBLE_FROM)
    data = simple(0x2, payload)
    stream = Stream(data, (100, 30_000), (), False, {"max_message_size": 2**20})
    outcome = run(stream, True)
    assert outcome.messages == [payload]
    assert outcome == run(stream, False)


# -- the reader itself -----------------------------------------------------------------------


LANES = UNMASK_LANES_FROM


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 32, LANES, LANES + 1, LANES + 3, 70_001])
def test_unmask_is_rfc6455_masking(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    assert unmask(data, key) == bytes(XorMaskerSimple(key).process(bytearray(data)))
    assert unmask(memoryview(data), key) == unmask(data, key)


def reader_of(router: Router, extra: str = "") -> object:
    router.add("/r", ChannelServer())
    server = Hub(router).open(0.0)
    server.receive_data(upgrade_request("/r", extra=extra), 0.0)
    assert server.data_to_send(0.0).startswith(b"HTTP/1.1 101")
    return server._reader


def test_the_fast_path_is_on_by_default_and_off_on_request_or_with_compression() -> None:
    assert isinstance(reader_of(Router()), FrameReader)
    assert not isinstance(reader_of(Router(fast_path=False)), FrameReader)
    compressing = Router()
    compressing_channel = ChannelServer(compression=True)
    compressing.add("/r", compressing_channel)
    server = Hub(compressing).open(0.0)
    server.receive_data(upgrade_request("/r", extra=DEFLATE), 0.0)
    assert b"permessage-deflate" in server.data_to_send(0.0)
    assert not isinstance(server._reader, FrameReader)


@pytest.mark.parametrize("value", [1, 0, "yes", "False", None, [True]])
def test_fast_path_takes_a_flag_only(value: object) -> None:
    with pytest.raises(UsageError, match=re.escape(f"fast_path is True or False, not {value!r}")):
        Router(fast_path=value)  # type: ignore[arg-type]
