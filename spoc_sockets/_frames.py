"""Server-to-client frame headers, built without wsproto so a frame can be shared.

A server frame carries no mask (RFC 6455 section 5.1), so without compression the bytes
of a message do not depend on the connection: a broadcast builds them once and every
client's output queue holds the same two objects (header, payload), with no copy.
"""

from __future__ import annotations

import struct

__all__ = ["OP_BINARY", "OP_TEXT", "frame_header"]

OP_TEXT = 0x1
OP_BINARY = 0x2

_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


#: the two-byte headers of small text and binary frames, built once
_SMALL = {
    opcode: [bytes((_FIN | opcode, length)) for length in range(126)]
    for opcode in (OP_TEXT, OP_BINARY)
}


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, unmasked, uncompressed frame of ``length`` payload bytes."""
    if length < 126:
        small = _SMALL.get(opcode)
        return small[length] if small is not None else bytes((_FIN | opcode, length))
    if length < 65536:
        return _LEN16.pack(_FIN | opcode, 126, length)
    return _LEN64.pack(_FIN | opcode, 127, length)
