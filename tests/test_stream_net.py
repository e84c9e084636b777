"""The stream's attacks over a real 127.0.0.1 socket (asyncio adapter, ``websockets``
client): squatting a stream id, an oversized init segment, deeply nested signalling."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from spoc_sockets import Router
from spoc_sockets.channels.stream import INIT, StreamServer
from spoc_sockets.request import Request

from .behaviour.harness_asyncio import start
from .behaviour.harness_net import LEGACY

TIMEOUT = 20.0


class ByUser(StreamServer):
    def identify(self, request: Request) -> object:
        return request.query.get("user")


def mount(stream: StreamServer) -> Router:
    router = Router()
    router.add("/stream/{stream_id}", stream)
    return router


def test_a_guest_cannot_squat_a_stream_id() -> None:
    with start(mount(StreamServer())) as server:
        url = f"ws://127.0.0.1:{server.port}/stream/main"
        with pytest.raises(InvalidStatus) as refused:
            connect(url + "?role=publish", open_timeout=TIMEOUT, **LEGACY)
        assert refused.value.response.status_code == 403


def test_oversized_init_and_nested_signals_are_answered_over_a_socket() -> None:
    with start(mount(ByUser(max_init_size=64 * 1024))) as server:
        url = f"ws://127.0.0.1:{server.port}/stream/s"
        with (
            connect(url + "?role=publish&user=ada", open_timeout=TIMEOUT, **LEGACY) as publisher,
            connect(url, max_size=None, open_timeout=TIMEOUT, **LEGACY) as viewer,
        ):
            assert json.loads(publisher.recv(timeout=TIMEOUT))["type"] == "publishing"
            assert json.loads(viewer.recv(timeout=TIMEOUT))["type"] == "viewing"
            assert json.loads(publisher.recv(timeout=TIMEOUT))["event"] == "joined"
            publisher.send(bytes([INIT]) + bytes(64 * 1024))
            error = json.loads(publisher.recv(timeout=TIMEOUT))
            assert error == {"type": "error", "code": "init_too_large", "max": 64 * 1024}
            viewer.send('{"type": "signal", "data": ' + "[" * 5000 + "]" * 5000 + "}")
            assert json.loads(viewer.recv(timeout=TIMEOUT))["code"] == "bad_json"
            viewer.send(json.dumps({"type": "signal", "data": {"sdp": "offer"}}))
            assert json.loads(publisher.recv(timeout=TIMEOUT))["data"] == {"sdp": "offer"}
