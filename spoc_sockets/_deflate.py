"""permessage-deflate (RFC 7692) with the inflated size bounded while inflating.

wsproto's :class:`~wsproto.extensions.PerMessageDeflate` inflates a frame in one call, so
a few kilobytes of compressed data could expand to gigabytes before any limit is checked.
:class:`BoundedDeflate` asks zlib for at most the bytes still allowed in the current
message, and fails the connection with 1009 as soon as more would come out.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .request import Request

__all__ = ["BoundedDeflate", "negotiate"]

_TAIL = b"\x00\x00\xff\xff"


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflated message size never exceeds ``max_size`` bytes."""

    def __init__(self, max_size: int | None) -> None:
        super().__init__()
        self.max_size = max_size
        self._inflated = 0  # bytes of the current message inflated so far

    def _inflate(self, data: bytes, end: bool = False) -> bytes | CloseReason:
        """Inflate ``data`` (``end``: the tail appended at the end of a message)."""
        decompressor = self._decompressor
        assert decompressor is not None
        if decompressor.eof:  # a block with BFINAL set ended the stream (RFC 7692 7.2.3.3)
            return b"" if end or not data else CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if self.max_size is None:
            out = decompressor.decompress(data)
        else:
            out = decompressor.decompress(data, self.max_size - self._inflated + 1)
            self._inflated += len(out)
            if self._inflated > self.max_size:
                return CloseReason.MESSAGE_TOO_BIG
        if decompressor.unused_data and not end:  # data after the final block
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return out

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():  # never compressed, and may come between fragments:
            if rsv.rsv1:  # the message's compression state is left alone
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False
            return RsvBits(False, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        try:
            return self._inflate(bytes(data))
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin:
            return None
        if not self._inbound_is_compressible:
            return None  # a control frame: the message it may interrupt goes on
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        try:
            data = self._inflate(_TAIL, end=True)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated = 0
        assert self._decompressor is not None
        if self.client_no_context_takeover or self._decompressor.eof:
            self._decompressor = None  # the next message starts a new stream
        self._inbound_compressed = None
        return data


_PARAMETERS = {
    "server_no_context_takeover": False,  # name: whether it takes a value
    "client_no_context_takeover": False,
    "server_max_window_bits": True,
    "client_max_window_bits": None,  # a value is optional
}


def _valid_offer(offer: str) -> bool:
    """RFC 7692 section 5: decline an offer with unknown, repeated or bad parameters."""
    seen = set()
    for parameter in offer.split(";")[1:]:
        name, equals, value = (part.strip() for part in parameter.partition("="))
        value = value.strip('"')
        if name not in _PARAMETERS or name in seen:
            return False
        seen.add(name)
        takes_value = _PARAMETERS[name]
        if takes_value is False and equals:
            return False
        if takes_value is True and not equals:
            return False
        if equals and not (value.isascii() and value.isdigit() and 8 <= int(value) <= 15):
            return False
    return True


def negotiate(request: Request, max_size: int | None) -> tuple[BoundedDeflate, str] | None:
    """Accept the client's first acceptable permessage-deflate offer, if any.

    Returns the extension and the ``Sec-WebSocket-Extensions`` value of the response.
    """
    for value in request.headers.get_all("sec-websocket-extensions"):
        for offer in value.split(","):
            if offer.split(";", 1)[0].strip().lower() != PerMessageDeflate.name:
                continue
            if not _valid_offer(offer):
                continue
            extension = BoundedDeflate(max_size)
            try:
                accepted = extension.accept(offer.strip())
            except ValueError:  # a malformed parameter: try the next offer
                continue
            if isinstance(accepted, str):
                answer = PerMessageDeflate.name + (f"; {accepted}" if accepted else "")
                return extension, answer
    return None
