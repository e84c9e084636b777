"""StreamServer: relay, late joiners, bounded slow viewers, signalling, stats, takeover."""

from __future__ import annotations

import json

import pytest

from spoc_sockets import Router
from spoc_sockets.channels.stream import DELTA, INIT, KEY, STREAM_ENDED, StreamServer
from spoc_sockets.node_compat import create_chat_server, setup_websocket_handlers
from spoc_sockets.testing import HandshakeRejected, TestClient, WebSocket


class Open(StreamServer):
    """Every client is the user "tester", who may publish."""

    def identify(self, request: object) -> object:
        return "tester"


def setup(**options: object) -> tuple[Router, StreamServer]:
    stream = Open(**options)
    return setup_websocket_handlers(create_chat_server(), stream), stream


def media(kind: int, body: bytes = b"x") -> bytes:
    return bytes([kind]) + body


def events(ws: WebSocket) -> list[dict[str, object] | bytes]:
    return [json.loads(m) if isinstance(m, str) else m for m in ws.receive_all()]


def test_publisher_media_reaches_every_viewer_framed_once() -> None:
    router, _ = setup()
    with TestClient(router) as client:
        viewers = [client.connect("/stream/s") for _ in range(3)]
        publisher = client.connect("/stream/s?role=publish")
        for v in viewers:
            v.receive_all()
        for v in viewers:
            v.server.pause_writing()  # hold the output to look at it
        publisher.send(media(KEY, b"k" * 1000))
        for v in viewers:
            v.server.data_to_send(client.now)  # the intake, while paused
        pieces = [v.server._out[-1] for v in viewers]
        assert all(p is pieces[0] for p in pieces)  # the same bytes object for every viewer
        for v in viewers:
            v.server.resume_writing()
        client.pump()
        assert all(v.receive() == media(KEY, b"k" * 1000) for v in viewers)


def test_late_joiner_gets_init_then_waits_for_a_key_frame() -> None:
    router, _ = setup()
    with TestClient(router) as client:
        publisher = client.connect("/stream/s?role=publish")
        publisher.send(media(INIT, b"header"))
        publisher.send(media(KEY, b"k1"))
        late = client.connect("/stream/s")
        assert events(late)[1:] == [media(INIT, b"header")]
        publisher.send(media(DELTA, b"d1"))
        assert late.receive_all() == []  # not decodable without a key frame
        publisher.send(media(KEY, b"k2"))
        publisher.send(media(DELTA, b"d2"))
        assert late.receive_all() == [media(KEY, b"k2"), media(DELTA, b"d2")]


def test_slow_viewer_drops_until_key_frame_and_is_told() -> None:
    router, stream = setup(viewer_buffer_bytes=10_000)
    with TestClient(router) as client:
        publisher = client.connect("/stream/s?role=publish")
        slow, fast = client.connect("/stream/s"), client.connect("/stream/s")
        slow.receive_all()
        fast.receive_all()
        publisher.send(media(KEY, b"k"))
        slow.server.pause_writing()  # its transport is full
        for _ in range(100):
            publisher.send(media(DELTA, b"d" * 1000))
            assert slow.server.buffered_amount <= 10_000
        assert len(fast.receive_all()) == 101  # the other viewer is not slowed
        stats = stream.stats("s")
        assert stats.drops > 80 and stats.viewers == 2
        slow.server.resume_writing()
        publisher.send(media(KEY, b"k2"))
        received = events(slow)
        assert {"type": "dropped", "dropped": 1} in received
        assert received[-2:] == [{"type": "resumed", "dropped": stats.drops}, media(KEY, b"k2")]


def test_signalling_between_publisher_and_one_viewer() -> None:
    router, _ = setup()
    with TestClient(router) as client:
        publisher = client.connect("/stream/s?role=publish")
        viewer = client.connect("/stream/s")
        viewer_id = events(viewer)[0]["id"]  # type: ignore[index]
        assert events(publisher)[-1] == {"type": "viewer", "event": "joined", "id": viewer_id}
        viewer.send_json({"type": "signal", "data": {"sdp": "offer"}})
        assert publisher.receive_json() == {
            "type": "signal", "from": viewer_id, "data": {"sdp": "offer"}
        }  # fmt: skip
        publisher.send_json({"type": "signal", "to": viewer_id, "data": {"sdp": "answer"}})
        assert viewer.receive_json() == {
            "type": "signal", "from": "publisher", "data": {"sdp": "answer"}
        }  # fmt: skip
        publisher.send_json({"type": "signal", "to": 999, "data": {}})
        assert publisher.receive_json() == {"type": "error", "code": "no_such_viewer"}


def test_stats_bytes_in_and_out() -> None:
    router, stream = setup()
    with TestClient(router) as client:
        publisher = client.connect("/stream/s?role=publish")
        viewers = [client.connect("/stream/s") for _ in range(2)]
        publisher.send(media(KEY, b"k" * 99))
        viewers[0].receive_all()
        viewers[0].send_json({"type": "stats"})
        assert viewers[0].receive_json() == {
            "type": "stats", "viewers": 2, "bytes_in": 100, "bytes_out": 200, "drops": 0
        }  # fmt: skip
        assert stream.stats("nothing").viewers == 0


def test_second_publisher_refused_and_takeover_after_leave() -> None:
    router, _ = setup()
    with TestClient(router) as client:
        first = client.connect("/stream/s?role=publish")
        viewer = client.connect("/stream/s")
        with pytest.raises(HandshakeRejected) as refused:
            client.connect("/stream/s?role=publish")
        assert refused.value.status == 409
        first.close()
        assert {"type": "ended", "stream": "s"} in events(viewer)
        assert viewer.close_code == STREAM_ENDED
        second = client.connect("/stream/s?role=publish")
        assert second.receive_json() == {"type": "publishing", "stream": "s"}


def test_bad_role_and_refused_publisher() -> None:
    class Guarded(StreamServer):
        def can_publish(self, request: object, stream_id: str, user: object) -> bool:
            return stream_id == "open"

    router = Router()
    router.add("/stream/{stream_id}", Guarded())
    with TestClient(router) as client:
        for path, status in [("/stream/x?role=dance", 400), ("/stream/x?role=publish", 403)]:
            with pytest.raises(HandshakeRejected) as refused:
                client.connect(path)
            assert refused.value.status == status
        client.connect("/stream/open?role=publish")


def test_viewer_binary_is_ignored_and_bad_text_answered() -> None:
    router, _ = setup()
    with TestClient(router) as client:
        publisher = client.connect("/stream/s?role=publish")
        viewer = client.connect("/stream/s")
        publisher.receive_all()
        viewer.receive_all()
        viewer.send(media(KEY, b"not a publisher"))
        assert publisher.receive_all() == []
        viewer.send("{")
        assert viewer.receive_json() == {"type": "error", "code": "bad_json"}
        viewer.send_json({"type": "dance"})
        assert viewer.receive_json() == {"type": "error", "code": "unknown_type"}


def test_seed_router_mounts_chat_and_stream_and_refuses_others() -> None:
    router, _ = setup()
    assert set(router.channels) == {"/chat", "/stream", "/stream/{stream_id}"}
    with TestClient(router) as client:
        client.connect("/chat").close()
        client.connect("/stream").close()
        with pytest.raises(HandshakeRejected) as refused:
            client.connect("/other")
        assert refused.value.status == 404


def test_oversized_signals_are_refused_and_no_publisher_is_answered() -> None:
    router, _ = setup(max_signal_size=100)
    with TestClient(router) as client:
        viewer = client.connect("/stream/s")
        viewer.receive_all()
        viewer.send_json({"type": "signal", "data": "x"})
        assert viewer.receive_json() == {"type": "error", "code": "no_publisher"}
        viewer.send_json({"type": "signal", "data": "x" * 200})
        assert viewer.receive_json() == {"type": "error", "code": "too_long"}


def test_closing_a_connection_the_stream_never_registered_tells_nobody() -> None:
    """A second publisher that passed authenticate but lost the race in on_connect is
    closed without ever being registered: its on_close must not report a viewer."""
    router, stream = setup()
    with TestClient(router) as client:
        publisher = client.connect("/stream/s?role=publish")
        viewer = client.connect("/stream/s")
        publisher.receive_all()
        never_registered = viewer.server.connection
        assert never_registered is not None
        stream._streams["s"].viewers.pop(never_registered)
        stream.on_close(never_registered, 1008, "lost the race")
        assert publisher.receive_all() == []
