"""Regressions: faults found in the core, each fixed and pinned here."""

from __future__ import annotations

import threading
import zlib

import pytest

from spoc_sockets import Connection, Deferred, Hub, Reject, Request, Router, UsageError

from ..frames import upgrade_request
from .wire import Echo, Peer, Recorder, close_payload, frame, router_with


def test_pongs_respect_max_buffered_amount_while_paused() -> None:
    channel = Recorder(max_buffered_amount=10_000)
    peer = Peer(router_with("/r", channel))
    conn = peer.handshake("/r")
    peer.server.pause_writing()
    for _ in range(200):  # a peer that pings and never reads
        peer.send(frame(0x9, b"p" * 125))
    assert conn.buffered_amount <= 10_000


def test_ping_between_compressed_fragments() -> None:
    recorder = Recorder(compression=True)
    peer = Peer(router_with("/z", recorder))
    peer.send(upgrade_request("/z", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    compressor = zlib.compressobj(wbits=-15)
    data = (compressor.compress(b"hello world " * 10) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    peer.send(frame(0x2, data[:10], rsv=4, fin=False) + frame(0x9, b"p") + frame(0x0, data[10:]))
    assert recorder.messages == [b"hello world " * 10]


def test_unsupported_transfer_encoding_gets_a_documented_status() -> None:
    peer = Peer(router_with())
    peer.send(upgrade_request("/echo", extra="Transfer-Encoding: gzip\r\n"))
    assert peer.answer.status in {400, 404, 405, 408, 426, 431, 503}


def test_a_target_without_leading_slash_does_not_route() -> None:
    router = Router()
    router.add("/{room}/{user}", Recorder())
    peer = Peer(router)
    peer.send(upgrade_request("garbage/a/b"))
    assert peer.answer.status == 404


def test_ping_before_a_compressed_message() -> None:
    recorder = Recorder(compression=True, ping_interval=None)
    peer = Peer(router_with("/z", recorder))
    peer.send(upgrade_request("/z", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    compressor = zlib.compressobj(wbits=-15)
    data = (compressor.compress(b"") + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    peer.send(frame(0x9, b"p") + frame(0x1, data, rsv=4))
    assert recorder.messages == [""]


def test_an_encoded_slash_never_matches_a_static_path() -> None:
    router = Router()
    router.add("/a/b", Recorder())
    peer = Peer(router)
    peer.send(upgrade_request("/a%2Fb"))
    assert peer.answer.status == 404


class Refuses499(Recorder):
    def authenticate(self, request: Request) -> object:
        if request.query.get("later"):
            deferred = Deferred()
            deferred.reject(499, "client closed request")
            return deferred
        raise Reject(499, "client closed request")


@pytest.mark.parametrize("path", ["/r", "/r?later=1"])
def test_a_status_http_does_not_name_is_still_answered(path: str) -> None:
    peer = Peer(router_with("/r", Refuses499()))
    peer.send(upgrade_request(path))
    peer.flush()
    assert peer.answer.status == 499
    assert peer.server.should_close


class Greedy(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(b"x" * 2000)


def test_overflow_close_keeps_the_101_response() -> None:
    peer = Peer(router_with("/g", Greedy(max_buffered_amount=1000)))
    peer.send(upgrade_request("/g") + frame(0x1, b"go"))
    peer.flush()
    assert peer.answer.status == 101
    assert peer.close_code == 1008


@pytest.mark.parametrize("overflow", ["drop", "close"])
def test_sends_from_a_thread_stay_bounded_before_any_flush(overflow: str) -> None:
    channel = Recorder(max_buffered_amount=64 * 1024, overflow=overflow)
    peer = Peer(router_with("/r", channel))
    conn = peer.handshake("/r")
    peer.server.pause_writing()
    worker = threading.Thread(target=lambda: [conn.send(b"m" * 1024) for _ in range(10_000)])
    worker.start()
    worker.join()
    assert conn.buffered_amount <= 64 * 1024  # counted as soon as send returned
    assert len(peer.server.session.mailbox) <= 64  # and nothing more is held
    if overflow == "drop":
        assert conn.dropped > 9_000
    else:
        peer.server.resume_writing()
        peer.flush()
        assert peer.close_code == 1008


def test_stream_viewer_bound_sees_what_one_read_queued() -> None:
    from spoc_sockets.channels.stream import DELTA, KEY, StreamServer

    class Open(StreamServer):
        def can_publish(self, request: Request, stream_id: str, user: object) -> bool:
            return True  # guests may publish here (the default refuses them)

    stream = Open(viewer_buffer_bytes=100_000)
    router = Router()
    router.add("/s/{stream_id}", stream)
    viewer, publisher = Peer(router), Peer(router)
    viewer_conn = viewer.handshake("/s/x")
    publisher.handshake("/s/x?role=publish")
    viewer.server.pause_writing()
    body = bytes(10_000)
    burst = frame(0x2, bytes([KEY]) + body) + b"".join(
        frame(0x2, bytes([DELTA]) + body) for _ in range(60)
    )
    publisher.send(burst)  # 600 kB in one read: no flush between the relays
    assert viewer_conn.buffered_amount <= 100_000 + 20_000
    assert stream.stats("x").drops > 40
    assert viewer_conn.dropped == 0  # the stream's own policy acted, not the core's


@pytest.mark.parametrize(
    "options",
    [
        {"ping_interval": 0},
        {"ping_timeout": -1},
        {"max_message_size": 0},
        {"close_timeout": 0},
        {"max_buffered_amount": 0},
        {"overflow": "explode"},
    ],
)
def test_option_values_that_would_misbehave_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Recorder(**options)


def test_close_code_1010_is_for_clients_only() -> None:
    conn = Peer(router_with("/r", Recorder())).handshake("/r")
    with pytest.raises(UsageError):
        conn.close(1010)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover=1",
    ],
)
def test_malformed_deflate_offers_are_declined(offer: str) -> None:
    peer = Peer(router_with("/z", Recorder(compression=True)))
    peer.send(upgrade_request("/z", extra=f"Sec-WebSocket-Extensions: {offer}\r\n"))
    peer.flush()
    assert peer.answer.status == 101
    assert peer.answer.header("sec-websocket-extensions") is None


def test_stale_timers_do_not_keep_finished_connections() -> None:
    router = router_with("/r", Recorder())
    hub = Hub(router)
    peers = [Peer(router, hub=hub) for _ in range(500)]
    for peer in peers:
        peer.handshake("/r")
        peer.eof()
        peer.server.transport_lost(peer.now)  # the adapter closed it
    assert len(hub._timers) <= 64 + 4 * len(hub.connections)


@pytest.mark.parametrize(
    "fault",
    [frame(0x1, b"x", rsv=2), frame(0x3, b""), frame(0x8, close_payload(1000))],
    ids=["reserved-bit", "reserved-opcode", "close"],
)
def test_a_reply_is_sent_before_a_fault_or_close_in_the_same_read(fault: bytes) -> None:
    peer = Peer(router_with("/e", Echo(ping_interval=None)))
    peer.handshake("/e")
    peer.send(frame(0x1, b"Hello, world!") + fault)
    peer.flush()
    frames = peer.frames
    assert frames[0].opcode == 0x1 and frames[0].payload == b"Hello, world!"
    assert frames[-1].opcode == 0x8
