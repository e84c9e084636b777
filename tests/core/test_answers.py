"""The answers of docs/answers.rst, pinned exactly: the point where a limit closes, the
origin that matches, the close reason a peer reads. Each test here fails on a plausible
one-token change of the core that the rest of the suite would let through."""

from __future__ import annotations

import pytest

from spoc_sockets import ChannelServer, Connection, ConnectionState, Deferred, Hub, Request

from ..frames import upgrade_request
from .wire import Peer, Recorder, close_payload, frame, router_with

# -- max_message_size counts the whole message, not each fragment ---------------------------


@pytest.mark.parametrize(
    ("opcode", "piece"),
    [(0x1, "a" * 1000), (0x1, "é" * 500), (0x2, b"a" * 1000)],
    ids=["ascii-text", "utf8-text", "binary"],
)
def test_1009_once_the_fragments_together_pass_the_limit(opcode: int, piece: str | bytes) -> None:
    recorder = Recorder(max_message_size=1000)
    router = router_with("/r", recorder)
    peer = Peer(router)
    peer.handshake("/r")
    payload = piece.encode() if isinstance(piece, str) else piece
    assert len(payload) == 1000  # one fragment is exactly the limit: allowed
    peer.send(frame(opcode, payload, fin=False))
    assert peer.close is None
    for _ in range(29):  # 30 fragments of 1,000 bytes: the second one passes the limit
        peer.send(frame(0x0, payload, fin=False))
        if peer.close is not None:
            break
    assert peer.close == (1009, "message over 1000 bytes")
    assert peer.server.state is ConnectionState.CLOSING
    peer.send(frame(0x0, payload))  # the message's end is ignored: nothing is delivered
    assert recorder.messages == []
    peer.send(frame(0x8, close_payload(1009)))
    assert recorder.closed == [(1009, "message over 1000 bytes")]
    assert router.upgraded == frozenset()


def test_1009_at_the_first_utf8_byte_past_the_limit() -> None:
    """Text is counted in bytes of UTF-8, not in characters."""
    recorder = Recorder(max_message_size=1000)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    peer.send(frame(0x1, ("é" * 300).encode(), fin=False))  # 600 bytes, 300 characters
    assert peer.close is None
    peer.send(frame(0x0, ("é" * 200 + "a").encode(), fin=False))  # 1001 bytes, 501 characters
    assert peer.close_code == 1009


def test_the_count_starts_again_with_each_message() -> None:
    recorder = Recorder(max_message_size=1000)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    for n in range(3):  # three messages of 1,000 bytes, in two fragments each
        peer.send(frame(0x1, b"x" * 600, fin=False) + frame(0x0, bytes([0x61 + n]) * 400))
    assert [len(m) for m in recorder.messages] == [1000, 1000, 1000]
    assert peer.close is None


# -- origins match exactly --------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.evil.net",  # the allowed one as a prefix
        "https://app.example:8443",
        "https://app.example/",
        "https://app.exampl",  # a prefix of the allowed one
        "http://app.example",
        "https://evil.net/https://app.example",  # the allowed one as a suffix
        "null",
    ],
)
def test_an_origin_that_is_not_exactly_allowed_is_403(origin: str) -> None:
    router = router_with("/o", Recorder(origins=["https://app.example"]))
    peer = Peer(router)
    peer.send(upgrade_request("/o", extra=f"Origin: {origin}\r\n"))
    assert peer.answer.status == 403
    assert peer.server.should_close
    assert router.upgraded == frozenset()


def test_the_allowed_origin_itself_is_accepted() -> None:
    peer = Peer(router_with("/o", Recorder(origins=["https://app.example"])))
    peer.send(upgrade_request("/o", extra="Origin: https://app.example\r\n"))
    assert peer.answer.status == 101


# -- the 1011 reasons -------------------------------------------------------------------------


class RaisesOnMessage(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        raise RuntimeError("secret")


class RaisesOnConnect(Recorder):
    def on_connect(self, conn: Connection) -> None:
        raise RuntimeError("secret")


@pytest.mark.parametrize(
    "channel", [RaisesOnMessage(), RaisesOnConnect()], ids=["on_message", "on_connect"]
)
def test_a_hook_that_raises_closes_1011_internal_error(channel: ChannelServer) -> None:
    router = router_with("/b", channel)
    peer = Peer(router)
    peer.handshake("/b")
    peer.send(frame(0x1, b"hi"))
    assert peer.close == (1011, "internal error")
    peer.send(frame(0x8, close_payload(1011)))
    assert peer.server.should_close
    assert router.upgraded == frozenset()


def test_no_pong_closes_1011_keepalive_ping_timeout() -> None:
    recorder = Recorder(ping_interval=10.0, ping_timeout=5.0)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    peer.advance(10.0)
    assert [f.opcode for f in peer.frames] == [0x9]
    peer.advance(5.0)
    assert peer.close == (1011, "keepalive ping timeout")
    assert peer.server.should_close  # the transport is dropped at once
    assert recorder.closed == [(1011, "keepalive ping timeout")]


# -- the 101 response -------------------------------------------------------------------------


def test_the_101_response_is_written_as_rfc_6455_shows_it() -> None:
    """Header names and values in their canonical case (some clients compare them so)."""
    channel = Recorder(subprotocols=["chat"])
    peer = Peer(router_with("/r", channel))
    key = "dGhlIHNhbXBsZSBub25jZQ=="  # the sample nonce of RFC 6455 section 1.3
    request = upgrade_request("/r", key=key, extra="Sec-WebSocket-Protocol: chat\r\n")
    peer.send(request)
    head = bytes(peer.out).partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert head == [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "Sec-WebSocket-Protocol: chat",
    ]


def test_the_101_response_names_the_negotiated_extension() -> None:
    peer = Peer(router_with("/z", Recorder(compression=True)))
    peer.send(upgrade_request("/z", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    head = bytes(peer.out).partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert head[-1].startswith("Sec-WebSocket-Extensions: permessage-deflate")


# -- output past max_buffered_amount: pongs count too -------------------------------------------


def pong_flood(overflow: str) -> tuple[Peer, Connection]:
    """Three pongs (127 bytes each) fit exactly in the limit; then two more pings."""
    peer = Peer(router_with("/r", Recorder(max_buffered_amount=3 * 127, overflow=overflow)))
    conn = peer.handshake("/r")
    peer.server.pause_writing()  # a peer that pings and never reads
    for n in range(5):
        peer.send(frame(0x9, bytes([n]) * 125))
    peer.server.resume_writing()
    peer.flush()
    return peer, conn


def test_pongs_past_the_limit_are_dropped_one_by_one_with_overflow_drop() -> None:
    peer, conn = pong_flood("drop")
    assert [(f.opcode, f.payload[:1]) for f in peer.frames] == [
        (0xA, b"\x00"),
        (0xA, b"\x01"),
        (0xA, b"\x02"),
    ]
    assert conn.dropped == 2
    assert peer.server.state is ConnectionState.OPEN


def test_pongs_past_the_limit_close_1008_slow_consumer() -> None:
    peer, conn = pong_flood("close")
    assert [f.opcode for f in peer.frames] == [0x8]  # the queued pongs are dropped
    assert peer.close == (1008, "slow consumer")
    assert conn.dropped == 0


# -- shutdown -----------------------------------------------------------------------------------


def test_shutdown_closes_1001_and_refuses_an_undecided_handshake_503() -> None:
    class Later(Recorder):
        def authenticate(self, request: Request) -> object:
            return Deferred() if request.path == "/later" else None

    router = router_with("/r", Later())
    router.add("/later", Later())
    hub = Hub(router)
    open_peer = Peer(router, hub=hub)
    open_peer.handshake("/r")
    waiting = Peer(router, hub=hub)
    waiting.send(upgrade_request("/later"))
    assert waiting.out == b""
    hub.shutdown(open_peer.now)
    open_peer.flush()
    waiting.flush()
    assert open_peer.close == (1001, "server shutting down")
    assert (waiting.answer.status, waiting.answer.body) == (503, b"the server is shutting down\n")


def test_a_deferred_rejected_without_arguments_is_403_with_no_body() -> None:
    class Later(Recorder):
        def authenticate(self, request: Request) -> object:
            deferred = Deferred()
            deferred.reject()
            return deferred

    peer = Peer(router_with("/r", Later()))
    peer.send(upgrade_request("/r"))
    assert (peer.answer.status, peer.answer.body) == (403, b"")


# -- keepalive ----------------------------------------------------------------------------------


def test_each_ping_has_its_own_payload_and_a_stale_pong_does_not_count() -> None:
    recorder = Recorder(ping_interval=10.0, ping_timeout=5.0)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    peer.advance(10.0)
    (first,) = peer.frames
    assert first.payload == b"\x00\x00\x00\x01"
    peer.send(frame(0xA, first.payload))
    assert peer.server.next_deadline() == 20.0  # the next ping, an interval after this one
    peer.advance(10.0)
    second = peer.frames[-1]
    assert (second.opcode, second.payload) == (0x9, b"\x00\x00\x00\x02")
    peer.send(frame(0xA, first.payload))  # an answer to the earlier ping
    peer.advance(5.0)
    assert peer.close == (1011, "keepalive ping timeout")
    assert peer.server.error is not None
    assert (str(peer.server.error), peer.server.error.code) == ("no pong within ping_timeout", 1011)


def test_an_unfinished_head_is_408_with_its_reason() -> None:
    peer = Peer(router_with(handshake_timeout=2.0))
    peer.send(b"GET /echo HTTP/1.1\r\n")
    peer.advance(2.0)
    assert (peer.answer.status, peer.answer.body) == (408, b"request head not received in time\n")
    assert peer.server.error is not None
    assert (str(peer.server.error), peer.server.error.status) == (
        "request head not received in time",
        408,
    )


# -- protocol errors: the close frame says what was wrong -----------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(0x0, b"continuation of nothing"), 1002),
        (frame(0x1, b"\xff\xfe"), 1007),
    ],
)
def test_a_protocol_error_is_explained_in_the_close_frame_and_the_error(
    data: bytes, code: int
) -> None:
    peer = Peer(router_with("/r", Recorder()))
    peer.handshake("/r")
    peer.send(data)
    assert peer.close is not None
    sent_code, reason = peer.close
    assert sent_code == code and reason  # a reason the peer can read
    assert peer.server.error is not None
    assert (str(peer.server.error), peer.server.error.code) == (reason, code)
    assert peer.server.should_close


# -- control frames past max_control_rate ---------------------------------------------------------


def test_the_ping_past_the_rate_is_not_answered_and_closes_1008_with_the_rate() -> None:
    recorder = Recorder(max_control_rate=1.5, ping_interval=None)  # 15 per 10-second window
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    peer.send(b"".join(frame(0x9, bytes([n])) for n in range(16)))
    pongs = [f.payload for f in peer.frames if f.opcode == 0xA]
    assert pongs == [bytes([n]) for n in range(15)]  # the 16th ping gets no pong
    assert peer.close == (1008, "more than 1.5 control frames per second")
    assert peer.server.error is not None
    assert (str(peer.server.error), peer.server.error.code) == (
        "more than 1.5 control frames per second",
        1008,
    )
