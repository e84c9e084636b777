"""The input fast path: simple frames decoded here, every other frame by wsproto.

Most client frames are simple: final, masked, no RSV bit, text or binary, arriving while
no message is in progress. :class:`FrameReader` owns the connection's input buffer,
reads each frame header itself and decodes simple frames at once (one unmasking over
the whole payload, one ``bytes`` or ``str`` per message), yielding each message itself
where wsproto would yield a final ``TextMessage`` or ``BytesMessage`` carrying it. Any
other frame (control frames, fragments, RSV bits, reserved opcodes, unmasked or oddly
encoded headers) goes to wsproto as whole bytes, and so does everything up to the end
of a message it started; a frame wsproto must refuse (bad
UTF-8 included) is handed to it to refuse, and after its first close event (the peer's
close frame or its verdict on an error) nothing more is read. So the events, their order
and their timing are wsproto's; tests/core/test_fastpath.py checks it on random
streams. Compressed connections do not use it (the router's ``fast_path`` option turns
it off for all).

Two departures, neither observable by the connection: a simple frame whose payload is
not all here yet waits in the buffer, or in its assembler (text frames go to wsproto, so
that invalid UTF-8 fails as soon as wsproto would fail it); for a binary frame each new
piece yields :data:`PROGRESS` instead of wsproto's partial message, which is what a
connection needs of it (the peer is not idle). A simple frame longer than the channel's
``max_message_size`` goes to wsproto, whose partial messages let the connection close
with 1009 as soon as the limit is crossed, before the frame is buffered.

A simple binary frame of :data:`ASSEMBLE_FROM` bytes or more (within the channel's
``max_message_size``) is not gathered whole in the input buffer: once a
:data:`RESERVE`-th of it is here, an :data:`Assembler` takes what came and unmasks each
later piece as it is received straight into the message, so the frame costs one
allocation of its size.

Unmasking is :data:`unmask` and assembling :data:`Assembler`: the optional compiled ones
(``spoc_sockets._speedups``, built at install time when a C compiler is there), which read
the payload straight from the input into the message, else :func:`unmask_python` and
:class:`PythonAssembler`; :data:`MASKER` says which. wsproto keeps its own masker for the
frames it reads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Final, Protocol

from wsproto.connection import Connection as WSConnection
from wsproto.events import CloseConnection, Event

__all__ = [
    "ASSEMBLE_FROM",
    "MASKER",
    "PROGRESS",
    "RESERVE",
    "UNMASK_LANES_FROM",
    "Assembler",
    "Assembling",
    "FrameReader",
    "Masker",
    "Progress",
    "PythonAssembler",
    "assembler_compiled",
    "unmask",
    "unmask_compiled",
    "unmask_python",
]

_TEXT = 0x81  # first header byte of a simple frame: FIN, no RSV bit, text
_BINARY = 0x82  # or binary
_MASKED = 0x80
_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))  # those RFC 6455 defines
_UNLIMITED = 1 << 63  # no payload length reaches it (RFC 6455 section 5.2)


#: Up to this many bytes, :func:`unmask_python` XORs big integers; past it, byte lanes.
UNMASK_LANES_FROM = 2048
_XOR = [bytes(byte ^ key for byte in range(256)) for key in range(256)]


def unmask_python(data: bytes | bytearray | memoryview, key: bytes | bytearray) -> bytes:
    """``data`` XORed with the repeated 4-byte masking ``key`` (RFC 6455 section 5.3).

    A short payload is one big-integer XOR; a long one is four translations, one per
    byte lane (the conversions to and from an integer cost more per byte than they do).
    """
    if len(key) != 4:
        raise ValueError(f"the mask is 4 bytes, not {len(key)}")
    n = len(data)
    if n <= UNMASK_LANES_FROM:
        mask = int.from_bytes(key * (n >> 2) + key[: n & 3], "little")
        return (int.from_bytes(data, "little") ^ mask).to_bytes(n, "little")
    out = bytearray(data)
    for lane in range(4):
        out[lane::4] = out[lane::4].translate(_XOR[key[lane]])
    return bytes(out)


#: A masker: ``(data, key) -> bytes``, ``data`` XORed with the repeated 4-byte ``key``.
Masker = Callable[[bytes | bytearray | memoryview, bytes | bytearray], bytes]


class Assembling(Protocol):
    """A payload being assembled (what :data:`Assembler` makes)."""

    def feed(self, piece: bytes | bytearray | memoryview, /) -> int: ...
    def take(self) -> bytes: ...


class PythonAssembler:
    """One masked payload of ``length`` bytes arriving in pieces (the pure-Python
    :data:`Assembler`: it gathers the pieces, then unmasks them at once)."""

    __slots__ = ("_gathered", "_key", "_length")

    def __init__(self, length: int, key: bytes | bytearray, /) -> None:
        if len(key) != 4:
            raise ValueError(f"the mask is 4 bytes, not {len(key)}")
        if length < 0:
            raise ValueError(f"a length is 0 or more, not {length}")
        self._length, self._key = length, bytes(key)
        self._gathered: bytearray | None = bytearray()

    def feed(self, piece: bytes | bytearray | memoryview, /) -> int:
        """Take the next piece of the payload; the bytes still missing."""
        if self._gathered is None:
            raise ValueError("the message was taken")
        missing = self._length - len(self._gathered)
        if len(piece) > missing:
            raise ValueError(f"{len(piece)} bytes given where {missing} are missing")
        self._gathered += piece
        return missing - len(piece)

    def take(self) -> bytes:
        """The message, once full (once only)."""
        if self._gathered is None:
            raise ValueError("the message was taken")
        if len(self._gathered) != self._length:
            full = f"{len(self._gathered)} of {self._length} bytes"
            raise ValueError(f"the message is not full: {full}")
        gathered, self._gathered = self._gathered, None
        return unmask(gathered, self._key)


unmask_compiled: Masker | None = None
assembler_compiled: Callable[[int, bytes | bytearray], Assembling] | None = None
if os.environ.get("SPOC_SOCKETS_NO_SPEEDUPS") != "1":  # set at run time: pure Python too
    # not built (no compiler, or SPOC_SOCKETS_NO_SPEEDUPS=1 at install): pure Python
    with contextlib.suppress(ImportError):
        from ._speedups import Assembler as assembler_compiled
        from ._speedups import apply_mask as unmask_compiled

#: The masker in use, chosen once at import: ``"compiled"`` (the optional extension
#: ``spoc_sockets._speedups``) or ``"python"`` (:func:`unmask_python`; also when
#: ``SPOC_SOCKETS_NO_SPEEDUPS=1`` is set in the environment).
MASKER: Final = "python" if unmask_compiled is None else "compiled"

#: ``unmask(data, key)``: the compiled masker when it was built, else :func:`unmask_python`.
unmask: Masker = unmask_python if unmask_compiled is None else unmask_compiled

#: ``Assembler(length, key)``: the compiled assembler when it was built, else
#: :class:`PythonAssembler` (``feed(piece) -> missing``, then ``take() -> bytes``).
Assembler: Callable[[int, bytes | bytearray], Assembling] = assembler_compiled or PythonAssembler

#: Simple binary frames of this many payload bytes or more are assembled as they come,
#: when the channel has a ``max_message_size`` (else they are gathered as they come).
ASSEMBLE_FROM = 65536
#: An assembler reserves its frame's whole payload; it is made once the bytes of the
#: payload already here are at least a ``RESERVE``-th of it (until then the frame is
#: gathered), so a peer never has the server reserve more than ``RESERVE`` times what it sent.
RESERVE = 32


class Progress(Event):
    """Payload bytes of a simple binary frame arrived; the frame is not complete yet
    (where wsproto yields a partial message)."""


#: The one :class:`Progress` event.
PROGRESS = Progress()


class FrameReader:
    """The input of one uncompressed connection, read as wsproto's ``Connection`` is:
    :meth:`receive_data`, then :meth:`events` (lazily)."""

    def __init__(self, ws: WSConnection, max_message_size: int | None) -> None:
        self._ws = ws
        self._max = _UNLIMITED if max_message_size is None else max_message_size
        self._buf: bytes | bytearray = b""  # input not yet decoded or handed over
        self._pos = 0  # where it starts in _buf
        self._owed = 0  # bytes of the frame being handed to wsproto, still to hand over
        self._in_message = False  # wsproto received a message's first fragment, not its last
        self._seen = 0  # payload bytes of the incomplete simple binary frame seen so far
        self._handed_off = False  # wsproto reads everything from now on
        self._ended = False  # wsproto gave its close event: nothing more is read
        self._assembling: Assembling | None = None  # the large binary frame coming in
        self._missing = 0  # payload bytes it still misses
        self._fed = False  # it got some since the last event

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the transport (never ``b""``: end of stream is the caller's)."""
        if self._handed_off:
            self._ws.receive_data(data)
            return
        if self._ended:
            return
        if self._missing:  # the next bytes are the assembled frame's
            assembling, missing = self._assembling, self._missing
            assert assembling is not None
            self._fed = True
            if len(data) <= missing:
                self._missing = assembling.feed(data)
                return
            self._missing = assembling.feed(memoryview(data)[:missing])
            data = data[missing:]
        if self._pos == len(self._buf):  # the usual case: no copy (bytes cannot change)
            self._buf, self._pos = data if type(data) is bytes else bytes(data), 0
        else:
            buf = self._buf
            if isinstance(buf, bytes) or self._pos:
                buf = bytearray(memoryview(buf)[self._pos :])
                self._pos = 0
            buf += data
            self._buf = buf

    def events(self) -> Iterator[Event | str | bytes]:
        """The events of the input received so far (and of input received while this
        generator is suspended), as wsproto would give them; a simple frame's message
        comes as a ``str`` or ``bytes``."""
        while not self._ended:
            if self._assembling is not None:
                if self._missing:
                    if not self._fed:
                        return  # wait for more input
                    self._fed = False
                    yield PROGRESS
                    continue
                message, self._assembling = self._assembling.take(), None
                yield message
                continue
            if self._handed_off:
                yield from self._ws.events()
                return
            if self._owed:
                self._hand_frame()
                yield from self._wsproto_events()
                if self._owed and self._pos == len(self._buf):
                    self._compact()
                    return  # the rest of the frame is not here yet
                continue  # (or it came while this generator was suspended)
            event = self._next_frame()
            if event is not None:
                yield event
            elif not self._owed and not self._handed_off:
                self._compact()
                return  # wait for more input

    def _compact(self) -> None:
        """Keep only the input not yet read (a frame read is not held while waiting)."""
        if self._pos:
            self._buf, self._pos = self._buf[self._pos :], 0

    # -- simple frames ----------------------------------------------------------------

    def _next_frame(self) -> Event | str | bytes | None:
        """Decode the simple frame at the start of the input; or arrange for wsproto to
        read what is there (None: wait for more input, or the caller goes on)."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        if (first != _TEXT and first != _BINARY) or not second & _MASKED or self._in_message:
            return self._other_frame(first, second)
        measured = self._header(second & 0x7F)
        if measured is None:
            return None
        length, head = measured
        total = head + length
        if length > self._max:  # wsproto's partial messages meet the limit as it is crossed
            self._owed = total
            return None
        if available < total:
            if available == head:
                return None
            if first == _TEXT:  # wsproto decodes the part that is here now
                self._owed = total
                return None
            here = available - head
            if length >= ASSEMBLE_FROM and self._max != _UNLIMITED and here * RESERVE >= length:
                with contextlib.suppress(MemoryError, OverflowError):  # (then it is gathered)
                    assembling = Assembler(length, buf[pos + head - 4 : pos + head])
                    self._missing = assembling.feed(memoryview(buf)[pos + head :])
                    seen, self._seen = self._seen, 0
                    self._assembling, self._fed = assembling, False
                    self._buf, self._pos = b"", 0
                    return PROGRESS if here > seen else None
            if here > self._seen:
                self._seen = here
                return PROGRESS
            return None
        key = buf[pos + head - 4 : pos + head]
        payload = unmask(memoryview(buf)[pos + head : pos + total], key)
        if first == _BINARY:
            self._seen = 0
            self._pos = pos + total
            return payload
        try:
            text = payload.decode()
        except UnicodeDecodeError:  # wsproto fails the connection with its own reason
            self._owed = total
            return None
        self._pos = pos + total
        return text

    # -- every other frame -------------------------------------------------------------

    def _other_frame(self, first: int, second: int) -> Event | None:
        """A frame for wsproto: once its header is complete, hand it over whole (and the
        frames of the message it starts, up to its last); if wsproto must refuse it,
        hand everything over now (None either way)."""
        opcode, length = first & 0x0F, second & 0x7F
        control = opcode >= 0x8
        if (
            first & 0x70
            or opcode not in _OPCODES
            or (control and (not first & 0x80 or length > 125))
            or not second & _MASKED
        ):
            self._hand_off()
            return None
        measured = self._header(length)
        if measured is None:
            return None
        length, head = measured
        if not control:
            self._in_message = not first & 0x80
        self._owed = head + length
        return None

    def _header(self, short: int) -> tuple[int, int] | None:
        """The payload length of the frame at the start of the input (``short``: its 7-bit
        length; 126 and 127 announce a 2-byte and an 8-byte field) and the header's size
        with the masking key, once the whole header is here; None until then, or when
        wsproto must refuse the length field (not in its shortest form, or the 8-byte
        field's top bit set): handed off."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if short <= 125:
            length, head, refused = short, 6, False
        elif short == 126:
            if available < 4:
                return None
            length, head = buf[pos + 2] << 8 | buf[pos + 3], 8
            refused = length < 126
        else:
            if available < 10:
                return None
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 14
            refused = length < 65536 or length >= _UNLIMITED
        if refused:
            self._hand_off()
            return None
        return (length, head) if available >= head else None

    def _hand_frame(self) -> None:
        """Give wsproto what is here of the frame it reads."""
        take = min(self._owed, len(self._buf) - self._pos)
        if take:
            pos = self._pos
            self._ws.receive_data(bytes(memoryview(self._buf)[pos : pos + take]))
            self._pos = pos + take
            self._owed -= take

    def _wsproto_events(self) -> Iterator[Event]:
        for event in self._ws.events():
            if type(event) is CloseConnection:  # wsproto reads no further
                self._ended = True
                self._buf, self._pos = b"", 0
            yield event

    def _hand_off(self) -> None:
        """wsproto reads everything from here on (it has a frame to refuse)."""
        self._handed_off = True
        rest = memoryview(self._buf)[self._pos :]
        self._buf, self._pos = b"", 0
        if rest:
            self._ws.receive_data(bytes(rest))
