"""Regressions: faults found in the core, each fixed and pinned here."""

from __future__ import annotations

import zlib

from spoc_sockets import Router

from ..frames import upgrade_request
from .wire import Peer, Recorder, frame, router_with


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
