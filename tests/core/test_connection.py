"""ServerConnection and Hub at byte level: every row of the answers table, and more."""

from __future__ import annotations

import logging
import os
import threading
import tracemalloc
import weakref
import zlib

import pytest

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
    UsageError,
)
from spoc_sockets._connection import EVENTS_PER_TURN, JOIN_BELOW, http_response
from spoc_sockets.testing import ConnectionClosed, HandshakeRejected, TestClient

from ..frames import KEY, client_frame, upgrade_request
from .wire import Echo, Peer, Recorder, close_payload, frame, parse_frames, router_with

# -- refusals before the upgrade -------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "header"),
    [
        (upgrade_request("/nowhere"), 404, None),
        (upgrade_request("/echo", method="POST"), 405, ("Allow", "GET")),
        (upgrade_request("/echo", method="PUT"), 405, ("Allow", "GET")),
        (upgrade_request("/echo", upgrade=""), 426, ("Upgrade", "websocket")),
        (upgrade_request("/echo", upgrade="h2c"), 426, ("Upgrade", "websocket")),
        (upgrade_request("/echo", key="short"), 400, None),
        (upgrade_request("/echo", key="!!!not base64!!!"), 400, None),
        (upgrade_request("/echo", key=None), 400, None),
        (upgrade_request("/echo", extra=f"Sec-WebSocket-Key: {KEY}\r\n"), 400, None),
        (upgrade_request("/echo", http="1.0"), 400, None),
        (upgrade_request("/echo", version="8"), 426, ("Sec-WebSocket-Version", "13")),
        (upgrade_request("/echo", version=""), 426, ("Sec-WebSocket-Version", "13")),
        (
            upgrade_request("/echo", extra="Sec-WebSocket-Version: 13\r\n"),
            426,
            ("Sec-WebSocket-Version", "13"),
        ),
        (upgrade_request("/echo", extra="Content-Length: 5\r\n") + b"hello", 400, None),
        (upgrade_request("/echo", extra="Transfer-Encoding: chunked\r\n"), 400, None),
        (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 426, ("Upgrade", "websocket")),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, None),
    ],
)
def test_refusals_at_byte_level(
    request_bytes: bytes, status: int, header: tuple[str, str] | None
) -> None:
    router = router_with()
    peer = Peer(router)
    peer.send(request_bytes)
    answer = peer.answer
    assert answer.status == status
    assert answer.header("Connection") == "close"
    assert answer.header("Content-Length") == str(len(answer.body))
    if header is not None:
        assert answer.header(header[0]) == header[1]
    assert peer.server.should_close
    assert router.upgraded == frozenset()
    assert peer.hub.connections == []
    peer.send(upgrade_request("/echo"))  # later input is ignored
    assert peer.answer.status == status


def test_missing_connection_upgrade_is_400() -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
        b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    router = router_with()
    peer = Peer(router)
    peer.send(request)
    assert peer.answer.status == 400
    assert router.stats()["/echo"].refused == {400: 1}  # counted on the channel's path


def test_a_plain_request_on_a_channel_path_counts_as_refused_with_its_status() -> None:
    router = router_with()
    Peer(router).send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    Peer(router).send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert router.stats()["/echo"].refused == {426: 1, 405: 1}


@pytest.mark.parametrize(("status", "refused"), [(200, {}), (399, {}), (400, {400: 1})])
def test_an_http_route_at_a_channel_path_counts_its_errors_as_refusals(
    status: int, refused: dict[int, int]
) -> None:
    router = router_with()
    router.add_http("/echo", lambda request: Response(status, "answer\n"))
    peer = Peer(router)
    peer.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert peer.answer.status == status
    assert router.stats()["/echo"].refused == refused


@pytest.mark.parametrize(
    ("extra_lines", "answer"), [(3, (101, b"")), (4, (431, b"more than 8 header lines\n"))]
)
def test_max_headers_header_lines_pass_and_one_more_is_431(
    extra_lines: int, answer: tuple[int, bytes]
) -> None:
    peer = Peer(router_with(max_headers=8))  # the request has five lines of its own
    peer.send(upgrade_request("/echo", extra="".join(f"X-{i}: v\r\n" for i in range(extra_lines))))
    assert (peer.answer.status, peer.answer.body) == answer


def test_connection_header_token_list_and_case_accepted() -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nupgrade: WebSocket\r\n"
        b"connection: keep-alive, UPGRADE\r\n"
        b"sec-websocket-key: " + KEY.encode() + b"\r\nsec-websocket-version: 13\r\n\r\n"
    )
    peer = Peer(router_with())
    peer.send(request)
    answer = peer.answer
    assert answer.status == 101
    assert answer.header("Sec-WebSocket-Accept") == "BACScCJPNqyz+UBoqMH89VmURoA="
    assert answer.header("Upgrade") == "websocket"


class Guarded(Recorder):
    origins = ("https://app.example", None)

    def authenticate(self, request: Request) -> object:
        token = request.query.get("token")
        if token == "raise":
            raise ValueError("secret-detail-in-exception")
        if token != "ok":
            raise Reject(401, "token required", [("WWW-Authenticate", "Bearer")])
        return "ada"


def test_origin_not_allowed_is_403_and_missing_origin_allowed_by_none() -> None:
    router = router_with("/g", Guarded())
    bad = Peer(router)
    bad.send(upgrade_request("/g?token=ok", extra="Origin: https://evil.example\r\n"))
    assert bad.answer.status == 403
    good = Peer(router)
    good.send(upgrade_request("/g?token=ok", extra="Origin: https://app.example\r\n"))
    assert good.answer.status == 101
    none = Peer(router)
    none.send(upgrade_request("/g?token=ok"))
    assert none.answer.status == 101
    strict = router_with("/s", Recorder(origins=["https://app.example"]))
    peer = Peer(strict)
    peer.send(upgrade_request("/s"))
    assert peer.answer.status == 403


def test_reject_status_body_and_headers_on_the_wire() -> None:
    peer = Peer(router_with("/g", Guarded()))
    peer.send(upgrade_request("/g"))
    answer = peer.answer
    assert answer.status == 401
    assert answer.body == b"token required"
    assert answer.header("WWW-Authenticate") == "Bearer"
    assert answer.header("Content-Type") == "text/plain; charset=utf-8"


def test_authenticate_raising_is_500_without_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = router_with("/g", Guarded())
    peer = Peer(router)
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer.send(upgrade_request("/g?token=raise"))
    answer = peer.answer
    assert answer.status == 500
    assert b"secret" not in bytes(peer.out)
    assert "secret-detail-in-exception" in caplog.text  # logged for the operator
    assert router.upgraded == frozenset()


def test_head_over_max_request_size_is_431_when_it_arrives_in_pieces() -> None:
    router = router_with(max_request_size=1024)
    peer = Peer(router)
    request = upgrade_request("/echo", extra="X-Pad: " + "a" * 4000 + "\r\n")
    for i in range(0, len(request), 512):
        peer.send(request[i : i + 512])
        if peer.server.should_close:
            break
    assert peer.answer.status == 431
    assert i < 2048  # refused as soon as the limit was crossed, not at the end


def padded_request(size: int) -> bytes:
    """An upgrade request to /echo of exactly ``size`` bytes."""
    bare = upgrade_request("/echo", extra="X-Pad: \r\n")
    return upgrade_request("/echo", extra="X-Pad: " + "a" * (size - len(bare)) + "\r\n")


def test_a_head_of_max_request_size_bytes_passes_and_one_byte_more_is_431() -> None:
    router = router_with(max_request_size=1024)
    fits = Peer(router)
    fits.send(padded_request(1024) + frame(0x1, b"early"))  # what follows is not the head
    assert fits.answer.status == 101
    too_big = Peer(router)
    too_big.send(padded_request(1025))
    assert too_big.answer.status == 431
    assert too_big.answer.body == b"request head too large\n"
    error = too_big.server.error  # what the logs say of the peer
    assert error is not None and error.status == 431
    assert str(error) == "request head too large"


def test_the_peer_fault_behind_a_refusal_is_kept_for_the_logs() -> None:
    garbage = Peer(router_with())
    garbage.send(b"NOT HTTP AT ALL\r\n\r\n")  # h11 cannot parse it
    assert garbage.answer.status == 400
    error = garbage.server.error
    assert error is not None and error.status == 400
    assert garbage.answer.body == f"{error}\n".encode() != b"None\n"
    bad_key = Peer(router_with())
    bad_key.send(upgrade_request("/echo", key="short"))  # parsed, then refused by the core
    assert bad_key.answer.status == 400
    error = bad_key.server.error
    assert error is not None and error.status == 400


def test_unfinished_head_is_408_at_handshake_timeout() -> None:
    peer = Peer(router_with(handshake_timeout=5.0))
    peer.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    assert peer.server.next_deadline() == 5.0
    peer.advance(4.9)
    assert peer.out == b"" and not peer.server.should_close
    peer.advance(0.1)
    assert peer.answer.status == 408
    assert peer.server.should_close
    assert peer.server.error is not None and peer.server.error.status == 408


def test_one_byte_of_a_request_head_then_silence_is_408() -> None:
    peer = Peer(router_with(handshake_timeout=5.0))
    peer.send(b"G")
    peer.advance(5.0)
    assert peer.answer.status == 408
    assert peer.server.should_close


def test_the_channel_sees_header_names_in_lower_case_and_values_as_sent() -> None:
    channel = Recorder(ping_interval=None)
    peer = Peer(router_with("/r", channel))
    request = upgrade_request("/r", extra="X-Custom: Mixed Case\r\nX-Latin: cafe\r\n")
    peer.send(request.replace(b"cafe", b"caf\xe9"))
    assert peer.answer.status == 101
    (conn,) = channel.connected
    headers = conn.request.headers.raw_items()
    assert ("x-custom", "Mixed Case") in headers
    assert ("x-latin", "caf\u00e9") in headers  # obs-text bytes, read as latin-1
    assert [name for name, _ in headers] == [name.lower() for name, _ in headers]


def test_a_status_http_does_not_name_gets_a_generic_reason_phrase() -> None:
    assert http_response(499, ()).startswith(b"HTTP/1.1 499 Error\r\n")
    assert http_response(299, ()).startswith(b"HTTP/1.1 299 Status\r\n")
    assert http_response(404, ()).startswith(b"HTTP/1.1 404 Not Found\r\n")


def test_nothing_received_by_the_deadline_closes_silently() -> None:
    peer = Peer(router_with(handshake_timeout=5.0))
    peer.server.handle_timeout(4.0)  # early: nothing
    assert not peer.server.should_close
    peer.advance(5.0)
    assert peer.out == b""
    assert peer.server.should_close
    assert peer.hub.connections == []


def test_eof_before_the_head_closes_silently() -> None:
    peer = Peer(router_with())
    peer.send(b"GET /echo HTTP/1.1\r\n")
    peer.eof()
    assert peer.out == b"" and peer.server.should_close


def test_503_after_shutdown_and_1001_to_open_connections() -> None:
    router = router_with()
    hub = Hub(router)
    open_peer = Peer(router, hub=hub)
    open_peer.handshake()
    half = Peer(router, hub=hub)
    half.send(b"GET /echo HTTP/1.1\r\n")
    fresh = Peer(router, hub=hub)
    hub.shutdown(fresh.now)
    assert hub.refusing
    open_peer.flush()
    assert open_peer.close_code == 1001
    assert open_peer.server.state is ConnectionState.CLOSING
    half.flush()
    assert half.server.should_close and half.out == b""  # dropped without an answer
    fresh.send(upgrade_request("/echo"))  # accepted before shutdown, nothing received: dropped
    assert fresh.server.should_close and fresh.out == b""
    late = Peer(router, hub=hub)
    late.send(upgrade_request("/echo"))
    assert late.answer.status == 503
    open_peer.advance(router.channels["/echo"].close_timeout)
    assert open_peer.server.should_close
    assert hub.connections == [] and router.upgraded == frozenset()


# -- Deferred ---------------------------------------------------------------------------


class Later(Recorder):
    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.deferreds: list[Deferred] = []

    def authenticate(self, request: Request) -> object:
        deferred = Deferred()
        self.deferreds.append(deferred)
        return deferred


def test_deferred_not_decided_in_time_is_503_and_later_accept_ignored() -> None:
    later = Later()
    router = router_with("/later", later, handshake_timeout=3.0)
    peer = Peer(router)
    peer.send(upgrade_request("/later"))
    assert peer.out == b"" and peer.server.state is ConnectionState.CONNECTING
    peer.advance(3.0)
    assert peer.answer.status == 503
    assert peer.server.should_close
    before = bytes(peer.out)
    later.deferreds[0].accept("late")  # no error, no effect
    peer.flush()
    assert bytes(peer.out) == before
    assert router.upgraded == frozenset() and later.connected == []


def test_deferred_accept_from_a_thread_after_it_is_attached_wakes_the_adapter() -> None:
    later = Later()
    router = router_with("/later", later)
    woken = threading.Event()
    hub = Hub(router, wakeup=woken.set)
    peer = Peer(router, hub=hub)
    peer.send(upgrade_request("/later") + frame(0x1, b"early"))
    assert peer.out == b""
    hub.take_pending()
    woken.clear()
    thread = threading.Thread(target=later.deferreds[0].accept, args=("ada",))
    thread.start()
    thread.join()
    assert woken.wait(1)
    assert hub.take_pending() == [peer.server]
    peer.flush()
    assert peer.answer.status == 101
    (conn,) = router.upgraded
    assert conn.user == "ada"
    assert later.messages == ["early"]  # the frame that came with the head was kept
    with pytest.raises(UsageError):
        later.deferreds[0].reject(401)


def test_deferred_accepted_by_a_thread_before_it_is_attached() -> None:
    class Quick(Recorder):
        def authenticate(self, request: Request) -> object:
            deferred = Deferred()
            thread = threading.Thread(target=deferred.accept, args=("bob",))
            thread.start()
            thread.join()
            assert deferred.done
            return deferred

    router = router_with("/q", Quick())
    with TestClient(router) as client, client.connect("/q") as ws:
        assert ws.open
        assert ws.server.connection is not None and ws.server.connection.user == "bob"


def test_deferred_reject_status_body_headers() -> None:
    later = Later()
    router = router_with("/later", later)
    peer = Peer(router)
    peer.send(upgrade_request("/later"))
    later.deferreds[0].reject(429, b"slow down", [("Retry-After", "7")])
    peer.flush()
    answer = peer.answer
    assert (answer.status, answer.body, answer.header("Retry-After")) == (429, b"slow down", "7")
    with pytest.raises(UsageError):
        later.deferreds[0].accept()
    with pytest.raises(UsageError):
        Deferred().reject(302)


def test_deferred_pending_eof_and_early_flood_are_bounded() -> None:
    later = Later()
    router = router_with("/later", later, max_request_size=2048)
    peer = Peer(router)
    peer.send(upgrade_request("/later"))
    peer.send(frame(0x2, b"x" * 4096))  # buffered while undecided: past the limit, dropped
    assert peer.server.should_close and peer.out == b""
    other = Peer(router)
    other.send(upgrade_request("/later"))
    other.eof()
    assert other.server.should_close
    later.deferreds[1].accept()
    other.flush()
    assert other.out == b"" and router.upgraded == frozenset()


def test_early_frames_while_deciding_are_kept_up_to_max_request_size_bytes() -> None:
    later = Later()
    router = router_with("/later", later, max_request_size=2048)
    kept, dropped = Peer(router), Peer(router)
    for peer, size in ((kept, 2048), (dropped, 2049)):
        peer.send(upgrade_request("/later"))
        early = frame(0x2, b"x" * (size - 8))  # a 2-byte length, the mask: 8 bytes of header
        assert len(early) == size
        peer.send(early)
    assert not kept.server.should_close
    assert dropped.server.should_close and dropped.out == b""
    later.deferreds[0].accept()
    kept.flush()
    assert kept.answer.status == 101
    assert later.messages == [b"x" * 2040]


def test_shutdown_refuses_an_undecided_deferred_with_503() -> None:
    later = Later()
    router = router_with("/later", later)
    hub = Hub(router)
    peer = Peer(router, hub=hub)
    peer.send(upgrade_request("/later"))
    hub.shutdown(peer.now)
    peer.flush()
    assert peer.answer.status == 503


# -- frames in the same read, second upgrade ------------------------------------------------


def test_frames_in_the_same_read_as_the_head_are_not_lost() -> None:
    echo = Echo()
    peer = Peer(router_with("/echo", echo))
    peer.send(upgrade_request("/echo") + frame(0x1, b"first") + frame(0x2, b"\x00second"))
    assert echo.messages == ["first", b"\x00second"]
    assert [(f.opcode, f.payload) for f in peer.frames] == [(1, b"first"), (2, b"\x00second")]


def test_a_second_upgrade_request_is_a_protocol_error() -> None:
    echo = Echo()
    router = router_with("/echo", echo)
    peer = Peer(router)
    peer.handshake()
    peer.send(upgrade_request("/echo"))
    assert peer.close_code == 1002
    assert bytes(peer.out).count(b"HTTP/1.1 101") == 1
    assert peer.server.should_close and router.upgraded == frozenset()
    assert echo.closed[0][0] == 1002


# -- protocol errors after the upgrade --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(0x1, b"unmasked", mask=False), 1002),
        (frame(0x3, b"reserved"), 1002),
        (frame(0xB, b"reserved control"), 1002),
        (frame(0x0, b"continuation of nothing"), 1002),
        (frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),  # new message mid-message
        (frame(0x9, b"p", fin=False), 1002),
        (frame(0x9, b"p" * 126), 1002),
        (frame(0x1, b"x", rsv=4), 1002),
        (frame(0x1, b"x", rsv=2), 1002),
        (frame(0x1, b"x", rsv=1), 1002),
        (frame(0x1, b"\xff\xfe"), 1007),
        (frame(0x1, b"\xc3", fin=False) + frame(0x0, b"(", fin=True), 1007),
        (frame(0x8, close_payload(1000) + b"\xff"), 1007),
        (frame(0x8, b"\x03"), 1002),  # a one-byte close payload
        (frame(0x8, close_payload(1005)), 1002),
        (frame(0x8, close_payload(999)), 1002),
    ],
)
def test_protocol_errors_fail_the_connection(data: bytes, code: int) -> None:
    recorder = Recorder()
    router = router_with("/r", recorder)
    peer = Peer(router)
    peer.handshake("/r")
    peer.send(data)
    assert peer.close_code == code
    assert peer.server.should_close
    assert peer.server.error is not None and peer.server.error.code == code
    assert recorder.closed == [(code, recorder.closed[0][1])]
    assert router.upgraded == frozenset() and peer.hub.connections == []


def test_invalid_utf8_detected_in_the_first_fragment_before_the_rest() -> None:
    peer = Peer(router_with("/r", Recorder()))
    peer.handshake("/r")
    peer.send(frame(0x1, b"ok\xff", fin=False))  # the rest is never sent
    assert peer.close_code == 1007


# -- message size -----------------------------------------------------------------------------


def test_1009_as_soon_as_a_fragmented_message_crosses_the_limit() -> None:
    recorder = Recorder(max_message_size=1000)
    router = router_with("/r", recorder)
    peer = Peer(router)
    peer.handshake("/r")
    peer.send(frame(0x2, b"a" * 600, fin=False))
    assert peer.close is None
    peer.send(frame(0x0, b"b" * 600, fin=False))  # 1200 > 1000; the final fragment never comes
    assert peer.close_code == 1009
    assert peer.server.state is ConnectionState.CLOSING
    assert recorder.messages == []
    assert peer.server._first is None and peer.server._rest is None  # nothing kept
    peer.send(frame(0x8, close_payload(1000)))
    assert peer.server.should_close
    assert recorder.closed[0][0] == 1009
    assert router.upgraded == frozenset()


@pytest.mark.parametrize("fast_path", [True, False])
def test_max_fragments_fragments_pass_and_one_more_is_1009(fast_path: bool) -> None:
    def fragmented(count: int) -> bytes:
        pieces = [frame(0x1 if i == 0 else 0x0, b"ab", fin=i == count - 1) for i in range(count)]
        return b"".join(pieces)

    recorder = Recorder(max_fragments=3, ping_interval=None)
    router = Router(fast_path=fast_path)
    router.add("/r", recorder)
    peer = Peer(router)
    peer.handshake("/r")
    peer.send(fragmented(3))
    peer.send(fragmented(3))  # the count starts again with each message
    assert recorder.messages == ["ababab"] * 2 and peer.close is None
    assert peer.server.error is None
    peer.send(fragmented(4))
    assert peer.close == (1009, "message in over 3 fragments")
    assert recorder.messages == ["ababab"] * 2
    error = peer.server.error  # what the logs say of the peer
    assert error is not None and error.code == 1009
    assert str(error) == "message in over 3 fragments"


def test_1009_within_one_large_frame_before_it_is_complete() -> None:
    recorder = Recorder(max_message_size=1000)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    whole = frame(0x1, b"a" * 100_000)
    peer.send(whole[:1500])  # a tenth of one frame: already past the limit
    assert peer.close_code == 1009


def test_a_message_exactly_at_the_limit_passes() -> None:
    text = "é" * 500  # 1000 bytes of UTF-8
    recorder = Recorder(max_message_size=1000)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    payload = text.encode()
    peer.send(frame(0x1, payload[:333], fin=False) + frame(0x0, payload[333:]))
    peer.send(frame(0x1, (text + "a").encode()))
    assert recorder.messages == [text]
    assert peer.close_code == 1009


def _compressed(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


DEFLATE = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def test_zip_bomb_closes_1009_without_inflating_it() -> None:
    limit = 2**20
    recorder = Recorder(compression=True, max_message_size=limit)
    router = router_with("/z", recorder)
    peer = Peer(router)
    peer.send(upgrade_request("/z", extra=DEFLATE))
    assert (
        peer.answer.header(
            "Sec-WebSocket-Extensions",
        )
        is not None
    )
    bomb = _compressed(b"\0" * (100 * limit))
    assert len(bomb) < limit // 4
    extension = peer.server._ws._proto.extensions[0]  # type: ignore[union-attr]
    tracemalloc.start()
    try:
        peer.send(frame(0x2, bomb, rsv=4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peer.close_code == 1009
    assert peer.server.state is ConnectionState.CLOSED
    assert recorder.messages == [] and recorder.closed[0][0] == 1009
    assert peak < 20 * limit  # 100 MiB was never produced
    assert extension._inflated <= limit + 1


def test_compressed_fragments_count_toward_the_limit_across_frames() -> None:
    limit = 10_000
    recorder = Recorder(compression=True, max_message_size=limit)
    peer = Peer(router_with("/z", recorder))
    peer.send(upgrade_request("/z", extra=DEFLATE))
    compressor = zlib.compressobj(wbits=-15)
    first = compressor.compress(b"a" * 6000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = compressor.compress(b"b" * 6000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    peer.send(frame(0x2, first, rsv=4, fin=False))
    assert peer.close is None
    peer.send(frame(0x0, second, fin=False))
    assert peer.close_code == 1009


def test_compression_round_trip_with_test_client() -> None:
    echo = Echo(compression=True)
    router = router_with("/echo", echo)
    with TestClient(router) as client, client.connect("/echo", compression=True) as ws:
        assert ws.server._compressed
        for message in ["hello " * 100, b"\x00\x01" * 1000, "é" * 3, b"", "again " * 100]:
            ws.send(message)
            assert ws.receive() == message
        assert echo.messages[-1] == "again " * 100


def test_compression_off_ignores_the_offer() -> None:
    peer = Peer(router_with())
    peer.send(upgrade_request("/echo", extra=DEFLATE))
    assert peer.answer.status == 101
    assert peer.answer.header("Sec-WebSocket-Extensions") is None
    peer.send(frame(0x1, b"x", rsv=4))
    assert peer.close_code == 1002


def test_compressed_frames_are_smaller_on_the_wire() -> None:
    router = router_with("/echo", Echo(compression=True))
    peer = Peer(router)
    peer.send(upgrade_request("/echo", extra=DEFLATE))
    peer.send(frame(0x1, _compressed(b"z" * 10_000), rsv=4))
    (reply,) = peer.frames
    assert reply.rsv == 4 and len(reply.payload) < 1000
    assert zlib.decompressobj(-15).decompress(reply.payload + b"\x00\x00\xff\xff") == b"z" * 10_000


# -- keepalive ----------------------------------------------------------------------------------


def test_pings_every_interval_and_pong_keeps_the_connection() -> None:
    recorder = Recorder(ping_interval=10.0, ping_timeout=5.0)
    router = router_with("/r", recorder)
    with TestClient(router) as client, client.connect("/r") as ws:
        assert ws.pings == 0
        client.advance(9.9)
        assert ws.pings == 0
        client.advance(0.1)
        assert ws.pings == 1
        for n in range(2, 6):
            client.advance(10.0)
            assert ws.pings == n
        assert ws.server.state is ConnectionState.OPEN and ws.close_code is None


def test_no_pong_closes_1011_at_ping_timeout() -> None:
    recorder = Recorder(ping_interval=10.0, ping_timeout=5.0)
    router = router_with("/r", recorder)
    with TestClient(router) as client, client.connect("/r", answer_pings=False) as ws:
        client.advance(10.0)
        assert ws.pings == 1
        client.advance(4.9)
        assert ws.close_code is None
        client.advance(0.1)
        assert ws.close_code == 1011
        assert ws.server.should_close
        assert recorder.closed[0][0] == 1011
        assert router.upgraded == frozenset()


def test_a_wrong_pong_does_not_count_and_unsolicited_pong_is_fine() -> None:
    recorder = Recorder(ping_interval=10.0, ping_timeout=5.0)
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    peer.send(frame(0xA, b"unsolicited"))
    peer.advance(10.0)
    (ping,) = [f for f in peer.frames if f.opcode == 0x9]
    peer.send(frame(0xA, b"wrong"))
    peer.advance(5.0)
    assert peer.close_code == 1011
    other = Peer(router_with("/r", Recorder(ping_interval=10.0, ping_timeout=5.0)))
    other.handshake("/r")
    other.advance(10.0)
    (ping,) = [f for f in other.frames if f.opcode == 0x9]
    other.advance(1.0)
    other.send(frame(0xA, ping.payload))
    other.advance(4.0)
    assert other.close is None
    assert other.server.next_deadline() == 20.0  # the next ping, one interval after the last


def test_the_pong_wait_is_ping_timeout_even_when_the_idle_deadline_comes_first() -> None:
    recorder = Recorder(ping_interval=5.0, ping_timeout=20.0, idle_timeout=10.0)
    with TestClient(router_with("/r", recorder)) as client:
        ws = client.connect("/r", answer_pings=False)
        client.advance(5.0)
        assert ws.pings == 1  # its pong is due by 25.0
        for _ in range(6):  # a message every 3 s: never idle, the idle deadline moves on
            client.advance(3.0)
            ws.send("still here")
        assert client.now == 23.0
        client.advance(1.9)
        assert ws.close_code is None
        client.advance(0.1)
        assert ws.close_code == 1011
        assert recorder.closed == [(1011, "keepalive ping timeout")]


def test_an_idle_deadline_that_finds_the_client_active_sends_no_ping_before_its_time() -> None:
    recorder = Recorder(ping_interval=10.0, ping_timeout=None, idle_timeout=4.0)
    with TestClient(router_with("/r", recorder)) as client, client.connect("/r") as ws:
        for _ in range(3):  # a message every 3 s: each idle deadline finds it active
            client.advance(3.0)
            ws.send("still here")
        client.advance(0.9)
        assert client.now == 9.9 and ws.pings == 0
        client.advance(0.1)
        assert ws.pings == 1 and ws.close_code is None


def test_ping_timeout_none_keeps_pinging_without_waiting() -> None:
    peer = Peer(router_with("/r", Recorder(ping_interval=1.0, ping_timeout=None)))
    peer.handshake("/r")
    for _ in range(5):
        peer.advance(1.0)
    assert [f.opcode for f in peer.frames] == [0x9] * 5
    assert peer.server.state is ConnectionState.OPEN


def test_ping_interval_none_sets_no_deadline() -> None:
    peer = Peer(router_with("/r", Recorder(ping_interval=None)))
    peer.handshake("/r")
    assert peer.server.next_deadline() is None
    assert peer.hub.next_deadline() is None
    peer.advance(10_000)
    assert peer.frames == []


def test_peer_ping_answered_with_its_payload() -> None:
    peer = Peer(router_with())
    peer.handshake()
    peer.send(frame(0x9, b"are you there"))
    assert [(f.opcode, f.payload) for f in peer.frames] == [(0xA, b"are you there")]


# -- the closing handshake --------------------------------------------------------------------


class Closer(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        super().on_message(conn, message)
        if isinstance(message, str) and message.startswith("close"):
            conn.close(4000, "bye")


def test_server_close_waits_for_the_peer_then_finishes() -> None:
    closer = Closer(close_timeout=3.0)
    router = router_with("/c", closer)
    peer = Peer(router)
    peer.handshake("/c")
    peer.send(frame(0x1, b"close"))
    assert peer.close == (4000, "bye")
    assert peer.server.state is ConnectionState.CLOSING
    assert closer.clients == frozenset()  # broadcasts skip it now
    assert closer.closed == []
    peer.send(frame(0x1, b"ignored while closing"))
    assert closer.messages == ["close"]
    peer.send(frame(0x8, close_payload(4000)))
    assert peer.server.should_close
    assert closer.closed == [(4000, "bye")]
    assert router.upgraded == frozenset()


def test_server_close_finishes_at_close_timeout_without_an_answer() -> None:
    closer = Closer(close_timeout=3.0)
    router = router_with("/c", closer)
    peer = Peer(router)
    peer.handshake("/c")
    peer.send(frame(0x1, b"close"))
    peer.advance(2.9)
    assert not peer.server.should_close
    peer.advance(0.1)
    assert peer.server.should_close
    assert closer.closed == [(4000, "bye")]
    assert router.upgraded == frozenset() and peer.hub.connections == []


def test_peer_close_answered_with_the_same_code() -> None:
    recorder = Recorder()
    router = router_with("/r", recorder)
    peer = Peer(router)
    peer.handshake("/r")
    peer.send(frame(0x8, close_payload(4321, "see you")))
    assert peer.close_code == 4321
    assert peer.server.should_close
    assert recorder.closed == [(4321, "see you")]


def test_peer_close_without_code_is_1005() -> None:
    recorder = Recorder()
    peer = Peer(router_with("/r", recorder))
    peer.handshake("/r")
    peer.send(frame(0x8))
    assert peer.close == (None, "")  # answered with an empty close frame
    assert recorder.closed == [(1005, "")]


def test_eof_without_close_frame_is_1006() -> None:
    recorder = Recorder()
    router = router_with("/r", recorder)
    peer = Peer(router)
    peer.handshake("/r")
    peer.eof()
    assert recorder.closed == [(1006, "")]
    assert peer.server.should_close and router.upgraded == frozenset()
    peer.eof()  # a second EOF changes nothing
    assert recorder.closed == [(1006, "")]


# -- hooks that raise ----------------------------------------------------------------------


def test_on_connect_raising_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    class Bad(Recorder):
        def on_connect(self, conn: Connection) -> None:
            raise RuntimeError("secret-connect")

    bad = Bad()
    router = router_with("/b", bad)
    peer = Peer(router)
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        peer.handshake("/b")
    assert peer.close_code == 1011
    assert b"secret" not in bytes(peer.out)
    assert "secret-connect" in caplog.text
    assert bad.clients == frozenset()


def test_on_message_raising_closes_1011_without_the_text() -> None:
    class Bad(Recorder):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            raise RuntimeError("secret-message")

    bad = Bad()
    peer = Peer(router_with("/b", bad))
    peer.handshake("/b")
    peer.send(frame(0x1, b"hi"))
    code, reason = peer.close  # type: ignore[misc]
    assert code == 1011 and "secret" not in reason
    assert b"secret" not in bytes(peer.out)
    peer.send(frame(0x8, close_payload(1011)))
    assert bad.closed[0][0] == 1011 and "secret" not in bad.closed[0][1]


def test_on_close_raising_is_logged_and_harmless(caplog: pytest.LogCaptureFixture) -> None:
    class Bad(Recorder):
        def on_close(self, conn: Connection, code: int, reason: str) -> None:
            raise RuntimeError("secret-close")

    router = router_with("/b", Bad())
    hub = Hub(router)
    a, b = Peer(router, hub=hub), Peer(router, hub=hub)
    a.handshake("/b")
    b.handshake("/b")
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        a.send(frame(0x8, close_payload(1000)))
        b.eof()
    assert "secret-close" in caplog.text
    assert a.close_code == 1000
    assert router.upgraded == frozenset() and hub.connections == []


# -- slow consumers ----------------------------------------------------------------------------


def test_overflow_close_sends_1008_and_drops_the_queue() -> None:
    channel = Recorder(max_buffered_amount=10_000, overflow="close", close_timeout=1.0)
    router = router_with("/s", channel)
    peer = Peer(router)
    conn = peer.handshake("/s")
    peer.server.pause_writing()
    for i in range(9):
        conn.send(bytes([i]) * 1000)
        peer.flush()
        assert conn.buffered_amount <= 10_000
    assert peer.server.state is ConnectionState.OPEN
    conn.send(b"x" * 2000)  # past the limit
    peer.flush()
    assert peer.server.state is ConnectionState.CLOSING
    assert conn.buffered_amount < 100  # only the close frame is left
    peer.server.resume_writing()
    peer.flush()
    frames = parse_frames(bytes(peer.out).partition(b"\r\n\r\n")[2])
    assert [f.opcode for f in frames] == [0x8]  # the queued messages were dropped
    assert peer.close == (1008, "slow consumer")
    peer.advance(1.0)
    assert channel.closed[0][0] == 1008


def test_overflow_drop_counts_and_keeps_the_connection() -> None:
    channel = Recorder(max_buffered_amount=10_000, overflow="drop")
    peer = Peer(router_with("/s", channel))
    conn = peer.handshake("/s")
    peer.out.clear()
    peer.server.pause_writing()
    for i in range(20):
        conn.send(bytes([i]) * 1000)
        peer.flush()
        assert conn.buffered_amount <= 10_000
    assert conn.dropped == 11
    assert peer.server.state is ConnectionState.OPEN
    peer.server.resume_writing()
    peer.flush()
    frames = parse_frames(bytes(peer.out))
    assert [f.payload[0] for f in frames] == list(range(9))
    assert conn.buffered_amount == 0
    conn.send(b"after")
    peer.flush()
    assert parse_frames(bytes(peer.out))[-1].payload == b"after"


def test_broadcast_frames_once_and_shares_the_bytes() -> None:
    room = Recorder()
    router = router_with("/room", room)
    hub = Hub(router)
    a, b, c = (Peer(router, hub=hub) for _ in range(3))
    ca, cb, cc = (p.handshake("/room") for p in (a, b, c))
    for peer in (a, b, c):
        peer.server.pause_writing()
    big = "x" * 100_000
    room.broadcast(big)
    for peer in (a, b, c):
        peer.flush()
    out_a, out_b = a.server._out, b.server._out
    assert len(out_a) == len(out_b) == 2
    assert out_a[0] is out_b[0] and out_a[1] is out_b[1]
    assert c.server._out[1] is out_a[1]
    room.broadcast(b"only b", exclude=[ca, cc])
    room.broadcast(b"not a", exclude=ca)
    room.broadcast(b"not c", exclude={cc})
    for peer in (a, b, c):
        peer.server.resume_writing()
        peer.flush()
    got = {name: [f.payload for f in peer.frames] for name, peer in (("a", a), ("b", b), ("c", c))}
    assert got["a"] == [big.encode(), b"not c"]
    assert got["b"] == [big.encode(), b"only b", b"not a", b"not c"]
    assert got["c"] == [big.encode(), b"not a"]
    assert cb.buffered_amount == 0


def test_buffers_to_send_give_a_large_payload_uncopied_and_join_the_small_pieces() -> None:
    """What a vectored write takes: the bytes of data_to_send, with a payload of
    JOIN_BELOW bytes or more as the very object sent, and the small pieces joined."""
    room = Recorder(max_message_size=None)
    router = router_with("/room", room)
    hub = Hub(router)
    vectored, joined = Peer(router, hub=hub), Peer(router, hub=hub)
    for peer in (vectored, joined):
        peer.handshake("/room")
        peer.server.pause_writing()
    big, small = os.urandom(JOIN_BELOW), b"s" * (JOIN_BELOW - 1)
    for payload in (b"a", b"b", big, small, b"c"):
        room.broadcast(payload)
    for peer in (vectored, joined):
        peer.server.resume_writing()
    buffers = vectored.server.buffers_to_send(0.0)
    assert b"".join(buffers) == joined.server.data_to_send(0.0)
    assert [len(b) for b in buffers] == [3 + 3 + 4, JOIN_BELOW, 4 + len(small) + 3]
    assert buffers[1] is big
    assert vectored.server.buffers_to_send(0.0) == []


def test_buffers_to_send_join_two_small_pieces_into_one() -> None:
    peer = Peer(router_with("/r", Recorder(ping_interval=None)))
    peer.handshake("/r")
    assert peer.server.connection is not None
    peer.server.connection.send(b"small")  # a frame header and its payload
    (buffer,) = peer.server.buffers_to_send(0.0)
    assert parse_frames(buffer)[0].payload == b"small"


def test_frames_handled_at_a_later_turn_are_input_at_that_turn() -> None:
    channel = Recorder(ping_interval=None, idle_timeout=10.0)
    peer = Peer(router_with("/r", channel))
    peer.handshake("/r")
    server = peer.server
    server.receive_data(frame(0x1, b"m") * (EVENTS_PER_TURN + 6), 0.0)
    assert server.input_paused and len(channel.messages) == EVENTS_PER_TURN
    server.buffers_to_send(3.0)  # the adapter's next turn, at 3.0: the last six are read
    assert not server.input_paused and len(channel.messages) == EVENTS_PER_TURN + 6
    peer.advance(10.0)
    assert peer.close is None  # the peer spoke at 3.0: idle from 13.0 only
    peer.advance(3.0)
    assert peer.close == (1001, "idle timeout")


def test_frames_that_fit_in_one_turn_ask_for_no_other_turn() -> None:
    peer = Peer(router_with("/r", Recorder(ping_interval=None)))
    peer.handshake("/r")
    peer.hub.take_pending()
    server = peer.server
    server.receive_data(frame(0x1, b"m") * (EVENTS_PER_TURN - 1), 0.0)
    assert not server.input_paused
    assert peer.hub.take_pending() == []  # nothing to write, nothing left: no wake-up
    server.receive_data(frame(0x1, b"m") * (EVENTS_PER_TURN + 1), 0.0)
    assert server.input_paused
    assert peer.hub.take_pending() == [server]  # the rest needs the next turn


def test_a_transport_reported_gone_has_no_deadline_and_gets_no_verdict() -> None:
    peer = Peer(router_with("/r", Recorder(ping_interval=None)))
    peer.handshake("/r")
    server = peer.server
    assert server.should_abort is False
    peer.eof()
    assert server.next_deadline() == peer.hub.drain_timeout  # draining
    server.transport_lost(1.0)
    assert server.next_deadline() is None
    server.handle_timeout(100.0)
    peer.hub.take_pending()
    server.abort()  # what a hub's deadline would do: too late, the transport is gone
    assert not server.should_abort
    assert peer.hub.take_pending() == []


def test_the_connection_log_lines_name_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    router = router_with()
    with caplog.at_level(logging.INFO, logger="spoc_sockets.connections"):
        Peer(router, peer=("10.0.0.9", 9)).handshake()
        Peer(router, peer=("10.0.0.8", 8)).send(upgrade_request("/echo", key="short"))
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("open /echo peer=10.0.0.9:9 ") for line in lines), lines
    assert "refused /echo peer=10.0.0.8:8 status=400" in lines


def test_a_connection_can_be_referenced_weakly() -> None:
    peer = Peer(router_with())
    assert weakref.ref(peer.server)() is peer.server


def test_broadcast_skips_closing_connections() -> None:
    closer = Closer()
    router = router_with("/c", closer)
    hub = Hub(router)
    a, b = Peer(router, hub=hub), Peer(router, hub=hub)
    a.handshake("/c")
    b.handshake("/c")
    a.send(frame(0x1, b"close"))
    closer.broadcast("news")
    a.flush()
    b.flush()
    assert [f.opcode for f in a.frames] == [0x8]
    assert [f.payload for f in b.frames] == [b"news"]


# -- the Connection API ---------------------------------------------------------------------------


def test_send_type_checks_and_copies_mutable_buffers() -> None:
    peer = Peer(router_with())
    conn = peer.handshake()
    for bad in (42, None, ["a"], {"a": 1}):
        with pytest.raises(UsageError):
            conn.send(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        conn.channel.broadcast(3.14)  # type: ignore[arg-type]
    buffer = bytearray(b"original")
    conn.send(buffer)  # type: ignore[arg-type]
    buffer[:] = b"MUTATED!"
    view_source = bytearray(b"view")
    conn.send(memoryview(view_source))  # type: ignore[arg-type]
    view_source[:] = b"VIEW"
    conn.send_json({"k": ["é", 1]})
    peer.flush()
    assert [(f.opcode, f.payload) for f in peer.frames] == [
        (2, b"original"),
        (2, b"view"),
        (1, '{"k":["é",1]}'.encode()),
    ]


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, 0])
def test_close_with_an_unsendable_code_raises(code: int) -> None:
    peer = Peer(router_with())
    conn = peer.handshake()
    with pytest.raises(UsageError):
        conn.close(code)
    peer.flush()
    assert peer.server.state is ConnectionState.OPEN


def test_close_reason_limit_is_123_bytes() -> None:
    peer = Peer(router_with())
    conn = peer.handshake()
    with pytest.raises(UsageError):
        conn.close(1000, "é" * 62)  # 124 bytes
    conn.close(3000, "é" * 61 + "a")  # 123 bytes: fine
    peer.flush()
    assert peer.close == (3000, "é" * 61 + "a")


def test_sends_after_close_are_discarded() -> None:
    peer = Peer(router_with())
    conn = peer.handshake()
    conn.close()
    conn.send("after close")
    conn.close(1001)  # a second close is ignored too
    peer.flush()
    assert [f.opcode for f in peer.frames] == [0x8]
    assert peer.close == (1000, "")
    assert conn.state is ConnectionState.CLOSING
    peer.send(frame(0x8, close_payload(1000)))
    conn.send("after closed")
    peer.flush()
    assert [f.opcode for f in peer.frames] == [0x8]
    assert conn.state is ConnectionState.CLOSED
    assert "closed" in repr(conn)


def test_connection_attributes() -> None:
    class Proto(Recorder):
        subprotocols = ("v2", "v1")

        def authenticate(self, request: Request) -> object:
            return {"name": "ada"}

    proto = Proto()
    router = router_with("/p", proto)
    with TestClient(router) as client, client.connect("/p?x=1", subprotocols=["v1", "v2"]) as ws:
        conn = ws.server.connection
        assert conn is not None
        assert ws.subprotocol == "v2" and conn.subprotocol == "v2"  # server preference
        assert conn.user == {"name": "ada"}
        assert conn.channel is proto and proto.clients == {conn}
        assert conn.request.query["x"] == "1"
        assert conn.state is ConnectionState.OPEN
        other = client.connect("/p")
        assert other.server.connection is not None and other.server.connection.id > conn.id


def test_subprotocol_none_acceptable_is_400_and_ignored_without_subprotocols() -> None:
    router = Router()
    router.add("/p", Recorder(subprotocols=["v1"]))
    router.add("/plain", Recorder())
    with TestClient(router) as client:
        with pytest.raises(HandshakeRejected) as refused:
            client.connect("/p", subprotocols=["v9", "v8"])
        assert refused.value.status == 400
        with client.connect("/plain", subprotocols=["v9"]) as ws:
            assert ws.open and ws.subprotocol is None
        with client.connect("/p") as ws:  # no offer: no subprotocol
            assert ws.open and ws.subprotocol is None
    peer = Peer(router)
    peer.send(upgrade_request("/p", extra="Sec-WebSocket-Protocol: v1\r\n"))
    assert peer.answer.header("Sec-WebSocket-Protocol") == "v1"


def test_send_from_another_thread_wakes_the_hub() -> None:
    router = router_with()
    woken = threading.Event()
    hub = Hub(router, wakeup=woken.set)
    peer = Peer(router, hub=hub)
    conn = peer.handshake()
    hub.take_pending()
    peer.flush()
    peer.out.clear()
    woken.clear()
    thread = threading.Thread(target=lambda: [conn.send(f"m{i}") for i in range(50)])
    thread.start()
    thread.join()
    assert woken.is_set()
    assert hub.take_pending() == [peer.server]  # scheduled once for 50 sends
    peer.flush()
    assert [f.payload for f in parse_frames(bytes(peer.out))] == [
        f"m{i}".encode() for i in range(50)
    ]


def test_test_client_receive_after_close_raises_connection_closed() -> None:
    router = router_with("/c", Closer())
    with TestClient(router) as client, client.connect("/c") as ws:
        ws.send("close")
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (4000, "bye")


def test_handshake_timeout_does_not_apply_after_the_upgrade() -> None:
    channel = Recorder(ping_interval=None)
    peer = Peer(router_with("/r", channel, handshake_timeout=1.0))
    peer.handshake("/r")
    peer.advance(100.0)
    assert peer.server.state is ConnectionState.OPEN
    assert isinstance(channel, ChannelServer)


# -- regressions and edges ------------------------------------------------------------------------


def test_a_complete_head_over_the_limit_in_one_read_is_431() -> None:
    router = router_with(max_request_size=1024)
    peer = Peer(router)
    peer.send(upgrade_request("/echo", extra="X-Pad: " + "a" * 4000 + "\r\n"))
    assert peer.answer.status == 431
    assert router.upgraded == frozenset()
    small = Peer(router)  # frames after a small head do not count toward it
    small.send(upgrade_request("/echo") + frame(0x2, b"x" * 4000))
    assert small.answer.status == 101
    assert [f.payload for f in small.frames] == [b"x" * 4000]


def test_sends_to_a_closed_connection_do_not_accumulate() -> None:
    router = router_with()
    with TestClient(router) as client:
        ws = client.connect("/echo")
        conn = ws.server.connection
        assert conn is not None
        ws.close()
        assert ws.server.should_close
        for _ in range(1000):
            conn.send("x")
        conn.channel.broadcast("y", to=[conn])
        assert len(ws.server.session.mailbox) == 0
        assert ws.server.buffered_amount == 0


def test_server_connection_without_a_hub() -> None:
    router = router_with()
    server = ServerConnection(router, 0.0, peer=("10.0.0.9", 9))
    server.receive_data(upgrade_request("/echo") + frame(0x1, b"hub-less"), 0.0)
    data = server.data_to_send(0.0)
    assert data.startswith(b"HTTP/1.1 101")
    assert [f.payload for f in parse_frames(data.partition(b"\r\n\r\n")[2])] == [b"hub-less"]
    assert server.connection is not None and server.connection.request.peer == ("10.0.0.9", 9)
    assert "10.0.0.9" in repr(server) and "open" in repr(server)
    server.connection.send("later")
    assert parse_frames(server.data_to_send(0.0))[0].payload == b"later"
    server.receive_data(b"", 1.0)
    assert server.should_close and router.upgraded == frozenset()
    server.handle_timeout(1e9)  # nothing left to time out
    server.shutdown()
    assert server.data_to_send(2.0) == b""


def test_while_closing_pings_are_not_answered_and_shutdown_is_a_no_op() -> None:
    closer = Closer(ping_interval=1.0, ping_timeout=1.0, close_timeout=5.0)
    router = router_with("/c", closer)
    hub = Hub(router)
    peer = Peer(router, hub=hub)
    peer.handshake("/c")
    peer.advance(1.0)  # a ping is out
    (ping,) = [f for f in peer.frames if f.opcode == 0x9]
    peer.send(frame(0x1, b"close"))
    hub.shutdown(peer.now)
    peer.send(frame(0x9, b"still there?") + frame(0xA, ping.payload))
    assert [f.opcode for f in peer.frames] == [0x9, 0x8]  # no pong, no second close
    assert peer.close == (4000, "bye")
    peer.advance(4.9)
    assert peer.server.state is ConnectionState.CLOSING
    peer.advance(0.1)
    assert peer.server.should_close and closer.closed == [(4000, "bye")]


def test_deferred_keeps_small_early_frames() -> None:
    later = Later()
    peer = Peer(router_with("/later", later, max_request_size=4096))
    peer.send(upgrade_request("/later"))
    peer.send(frame(0x1, b"one"))
    peer.send(frame(0x1, b"two"))
    assert not peer.server.should_close
    later.deferreds[0].accept()
    peer.flush()
    assert later.messages == ["one", "two"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"\x06\x00", 1007), (b"\x00\x00", 1007)],  # a bad block type; a bad stored block at the end
)
def test_corrupt_compressed_data_is_1007(payload: bytes, code: int) -> None:
    recorder = Recorder(compression=True)
    peer = Peer(router_with("/z", recorder))
    peer.send(upgrade_request("/z", extra=DEFLATE))
    peer.send(frame(0x2, payload, rsv=4))
    assert peer.close_code == code
    assert recorder.messages == []


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        ("permessage-deflate; client_max_window_bits=x, permessage-deflate", "permessage-deflate"),
        (
            "permessage-deflate; server_max_window_bits=99, "
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
        ),
        ("x-webkit-deflate-frame, permessage-deflate", "permessage-deflate"),
        ("permessage-deflate; server_max_window_bits=3", None),
        ("foo", None),
    ],
)
def test_deflate_negotiation(offer: str, answer: str | None) -> None:
    peer = Peer(router_with("/z", Recorder(compression=True)))
    peer.send(upgrade_request("/z", extra=f"Sec-WebSocket-Extensions: {offer}\r\n"))
    assert peer.answer.status == 101
    assert peer.answer.header("Sec-WebSocket-Extensions") == answer


def test_no_context_takeover_and_unlimited_size_with_compression() -> None:
    recorder = Recorder(compression=True, max_message_size=None)
    peer = Peer(router_with("/z", recorder))
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
    peer.send(upgrade_request("/z", extra=offer))
    big = b"q" * (3 * 2**20)
    for _ in range(2):  # each message with a fresh compressor, as no_context_takeover says
        peer.send(frame(0x2, _compressed(big), rsv=4))
    assert recorder.messages == [big, big]
    assert peer.close is None


def test_reject_repr_and_bad_status() -> None:
    assert repr(Reject(401, "who?")) == "Reject(401, b'who?')"
    with pytest.raises(UsageError):
        Reject(200)


def test_test_client_helpers() -> None:
    echo = Echo()
    router = router_with("/echo", echo)
    with TestClient(router, now=100.0) as client, client.connect("/echo") as ws:
        ws.send_json({"a": [1, "é"]})
        assert ws.receive_json() == {"a": [1, "é"]}
        ws.send_bytes(frame(0x1, b"raw") + frame(0x2, b"bin"))
        assert ws.receive_all() == ["raw", b"bin"]
        assert ws.receive_all() == []
        with pytest.raises(AssertionError):
            ws.receive()  # NothingReceived is an AssertionError: fails at once
        assert client.now == 100.0
        client.shutdown()
        with pytest.raises(HandshakeRejected) as refused:
            client.connect("/echo")
        assert refused.value.status == 503
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert closed.value.code == 1001
