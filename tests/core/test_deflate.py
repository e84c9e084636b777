"""permessage-deflate at byte level: the inflated size limit, the end of a deflate stream,
the reserved bits of control frames, and the answer to each offer."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest

from ..frames import upgrade_request
from .wire import Peer, Recorder, frame, router_with

DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate\r\n"


def compressed_peer(**options: object) -> tuple[Peer, Recorder]:
    recorder = Recorder(compression=True, ping_interval=None, **options)
    peer = Peer(router_with("/z", recorder))
    peer.send(upgrade_request("/z", extra=DEFLATE))
    assert peer.answer.header("Sec-WebSocket-Extensions") == "permessage-deflate"
    return peer, recorder


def flushed(compressor: zlib._Compress, data: bytes) -> bytes:
    """``data`` compressed and flushed to a byte boundary: a message's middle fragment."""
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def synced(compressor: zlib._Compress, data: bytes) -> bytes:
    """``data`` as a message's last fragment: flushed, without the 4-byte tail."""
    out = flushed(compressor, data)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def finished(data: bytes) -> bytes:
    """``data`` as a whole deflate stream, ending with a block that has BFINAL set."""
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)


# -- the inflated size ----------------------------------------------------------------------


def test_compressed_messages_of_exactly_max_message_size_arrive_one_after_another() -> None:
    peer, recorder = compressed_peer(max_message_size=1000)
    compressor = zlib.compressobj(wbits=-15)
    peer.send(frame(0x2, synced(compressor, b"a" * 1000), rsv=4))
    peer.send(frame(0x2, synced(compressor, b"b" * 1000), rsv=4))
    assert recorder.messages == [b"a" * 1000, b"b" * 1000]
    assert peer.close is None
    peer.send(frame(0x2, synced(compressor, b"c" * 1001), rsv=4))
    assert peer.close_code == 1009
    assert recorder.messages == [b"a" * 1000, b"b" * 1000]


def test_a_bomb_in_a_later_fragment_inflates_no_more_than_the_limit_has_left() -> None:
    limit = 2**20
    peer, recorder = compressed_peer(max_message_size=limit)
    compressor = zlib.compressobj(wbits=-15)
    peer.send(frame(0x2, flushed(compressor, b"a" * 600_000), rsv=4, fin=False))
    peer.send(frame(0x0, flushed(compressor, b"b" * 400_000), fin=False))
    assert peer.close is None
    bomb = frame(0x0, flushed(compressor, b"\0" * (50 * limit)), fin=False)  # 50 MiB inflated
    tracemalloc.start()
    try:
        peer.send(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peer.close_code == 1009
    assert recorder.messages == []
    left = limit - 1_000_000  # 48,576 bytes: all that the last fragment may inflate to
    assert peak < 4 * len(bomb) + 4 * left  # the frame, its copies, what it inflated to


# -- the end of a deflate stream ------------------------------------------------------------


def test_a_message_that_ends_the_deflate_stream_arrives_and_the_next_starts_a_new_one() -> None:
    peer, recorder = compressed_peer()
    peer.send(frame(0x1, finished(b"first " * 50), rsv=4))
    peer.send(frame(0x1, finished(b"second"), rsv=4))
    assert recorder.messages == ["first " * 50, "second"]
    assert peer.close is None


def test_an_empty_fragment_after_the_final_block_is_nothing_more() -> None:
    peer, recorder = compressed_peer()
    peer.send(frame(0x1, finished(b"whole"), rsv=4, fin=False) + frame(0x0, b""))
    assert recorder.messages == ["whole"]
    assert peer.close is None


@pytest.mark.parametrize(
    "frames",
    [
        [frame(0x2, finished(b"first") + b"\x00", rsv=4)],
        [
            frame(0x2, finished(b"first"), rsv=4, fin=False),
            frame(0x0, synced(zlib.compressobj(wbits=-15), b"more")),
        ],
    ],
    ids=["in-the-same-frame", "in-a-continuation-frame"],
)
def test_compressed_data_after_the_final_block_is_1007(frames: list[bytes]) -> None:
    peer, recorder = compressed_peer()
    for data in frames:
        peer.send(data)
    assert peer.close_code == 1007
    assert recorder.messages == []


def test_an_uncompressed_message_then_a_compressed_one_both_arrive() -> None:
    peer, recorder = compressed_peer()
    compressor = zlib.compressobj(wbits=-15)
    peer.send(frame(0x1, b"plain"))
    peer.send(frame(0x1, synced(compressor, b"packed"), rsv=4))
    peer.send(frame(0x1, b"plain again"))
    assert recorder.messages == ["plain", "packed", "plain again"]
    assert peer.close is None


# -- control frames -------------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [4, 2, 1], ids=["rsv1", "rsv2", "rsv3"])
@pytest.mark.parametrize("opcode", [0x9, 0xA, 0x8])
def test_a_control_frame_with_a_reserved_bit_is_1002(opcode: int, rsv: int) -> None:
    peer, _ = compressed_peer()
    peer.send(frame(opcode, b"", rsv=rsv))
    assert peer.close_code == 1002
    assert [f.opcode for f in peer.frames] == [0x8]  # no pong, no echo of the close


# -- negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        # a quoted value passes RFC 7692's grammar but not wsproto's parser: the next offer
        (
            'permessage-deflate; server_max_window_bits="10", permessage-deflate',
            "permessage-deflate",
        ),
        ("permessage-deflate; server_max_window_bits=+10", None),
        ("permessage-deflate; server_max_window_bits=+10; client_no_context_takeover", None),
        ("permessage-deflate; server_max_window_bits=16", None),
        (
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; server_max_window_bits=9",
        ),
        (
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate; client_max_window_bits=15",
        ),
    ],
)
def test_deflate_offers_and_answers(offer: str, answer: str | None) -> None:
    peer = Peer(router_with("/z", Recorder(compression=True)))
    peer.send(upgrade_request("/z", extra=f"Sec-WebSocket-Extensions: {offer}\r\n"))
    assert peer.answer.status == 101
    assert peer.answer.header("Sec-WebSocket-Extensions") == answer


@pytest.mark.parametrize("value", [b"\xb2", b"1\xb9", b"1\xb2"])
def test_a_window_size_in_superscript_digits_is_declined(value: bytes) -> None:
    """Latin-1 superscripts are digits to ``str.isdigit`` but not to ``int``."""
    offer = b"permessage-deflate; server_max_window_bits=" + value + b", permessage-deflate"
    request = upgrade_request("/z", extra="Sec-WebSocket-Extensions: OFFER\r\n")
    peer = Peer(router_with("/z", Recorder(compression=True)))
    peer.send(request.replace(b"OFFER", offer))
    assert peer.answer.status == 101
    assert peer.answer.header("Sec-WebSocket-Extensions") == "permessage-deflate"
