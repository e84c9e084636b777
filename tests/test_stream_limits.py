"""StreamServer on the open internet: who publishes, how many streams, the init segment,
signalling parse limits (in memory). See docs/stream-protocol.rst, "Bounds"."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from spoc_sockets import Deferred, Router, UsageError
from spoc_sockets.channels.stream import INIT, KEY, StreamServer
from spoc_sockets.node_compat import create_stream_server
from spoc_sockets.request import Request
from spoc_sockets.testing import ConnectionClosed, HandshakeRejected, TestClient


class ByUser(StreamServer):
    """``?user=`` is the user (a test's stand-in for the platform's authentication)."""

    def identify(self, request: Request) -> object:
        return request.query.get("user")


def mount(stream: StreamServer) -> Router:
    router = Router()
    router.add("/stream/{stream_id}", stream)
    return router


def refused(client: TestClient, path: str) -> int:
    with pytest.raises(HandshakeRejected) as refusal:
        client.connect(path)
    return refusal.value.status


def test_a_guest_cannot_squat_a_stream_by_default() -> None:
    with TestClient(mount(StreamServer())) as client:
        assert refused(client, "/stream/main?role=publish") == 403
        viewer = client.connect("/stream/main")  # watching stays open to guests
        assert viewer.receive_json()["live"] is False


def test_an_authenticated_user_may_publish_by_default() -> None:
    with TestClient(mount(ByUser())) as client:
        publisher = client.connect("/stream/main?role=publish&user=ada")
        assert publisher.receive_json() == {"type": "publishing", "stream": "main"}


def test_live_streams_per_server_are_capped_and_freed() -> None:
    with TestClient(mount(ByUser(max_streams=3))) as client:
        publishers = [client.connect(f"/stream/s{i}?role=publish&user=u{i}") for i in range(3)]
        assert refused(client, "/stream/s3?role=publish&user=ada") == 503
        client.connect("/stream/s0")  # a live stream takes more viewers
        client.connect("/stream/s3")  # and a viewer may wait for a publisher
        publishers[2].close()
        client.connect("/stream/s3?role=publish&user=ada")


def test_guest_viewers_cannot_fill_the_server_before_a_publisher() -> None:
    """Viewers of made-up ids, from many addresses, used to take every place in
    ``max_streams``: the real publisher of a new stream got 503."""
    stream = ByUser(max_streams=3)
    with TestClient(mount(stream)) as client:
        for i in range(10):
            client.connect(f"/stream/junk{i}", peer=(f"10.0.0.{i}", 40000))
        publisher = client.connect("/stream/lesson?role=publish&user=ada")
        assert publisher.receive_json() == {"type": "publishing", "stream": "lesson"}


def test_streams_without_a_publisher_are_capped_per_address() -> None:
    stream = ByUser(max_waiting_streams_per_address=2)
    here, there = ("10.0.0.1", 40000), ("10.0.0.2", 40000)
    with TestClient(mount(stream)) as client:
        w0 = client.connect("/stream/w0", peer=here)
        client.connect("/stream/w1", peer=here)
        with pytest.raises(HandshakeRejected) as refusal:
            client.connect("/stream/w2", peer=here)
        assert refusal.value.status == 429
        client.connect("/stream/w0", peer=here)  # a stream it waits on already: no more
        client.connect("/stream/w2", peer=there)  # another address has its own
        client.connect("/stream/w0?role=publish&user=ada")  # w0 is live: one place back
        client.connect("/stream/w3", peer=here)
        w0.close()
        with pytest.raises(HandshakeRejected):
            client.connect("/stream/w4", peer=here)
    assert stream._streams == {} and stream._waiting == Counter()


def test_streams_per_user_are_capped() -> None:
    with TestClient(mount(ByUser(max_streams_per_user=2))) as client:
        first = client.connect("/stream/a?role=publish&user=ada")
        client.connect("/stream/b?role=publish&user=ada")
        assert refused(client, "/stream/c?role=publish&user=ada") == 429
        client.connect("/stream/c?role=publish&user=bob")
        first.close()
        client.connect("/stream/c2?role=publish&user=ada")


@pytest.mark.parametrize(
    "stream_id",
    ["x" * 65, "a%20b", "%3Cscript%3E", "m%D0%B0in", "%EF%BD%8Dain", "%D9%A3", "m%CC%81ain"],
)
def test_stream_ids_are_validated(stream_id: str) -> None:
    with TestClient(mount(ByUser())) as client:
        assert refused(client, f"/stream/{stream_id}") == 400


def test_an_init_segment_too_large_is_refused_to_the_publisher() -> None:
    with TestClient(mount(ByUser(max_init_size=1000))) as client:
        publisher = client.connect("/stream/s?role=publish&user=ada")
        early = client.connect("/stream/s")
        publisher.receive_all()
        early.receive_all()
        publisher.send(bytes([INIT]) + bytes(1000))
        assert publisher.receive_json() == {
            "type": "error", "code": "init_too_large", "max": 1000
        }  # fmt: skip
        assert early.receive_all() == []  # not relayed, not kept
        publisher.send(bytes([INIT]) + bytes(999))
        late = client.connect("/stream/s")
        assert late.receive_all()[1:] == [bytes([INIT]) + bytes(999)]  # never a silent drop


def test_a_late_viewer_always_gets_the_largest_init_segment_allowed() -> None:
    stream = ByUser()
    with TestClient(mount(stream)) as client:
        publisher = client.connect("/stream/s?role=publish&user=ada")
        init = bytes([INIT]) + bytes(stream.max_init_size - 1)
        publisher.send(init)
        publisher.send(bytes([KEY]) + bytes(100))
        late = client.connect("/stream/s")
        assert late.receive_all()[1:] == [init]


@pytest.mark.parametrize(
    "message",
    [
        '{"type": "signal", "data": ' + "[" * 970 + "]" * 970 + "}",
        '{"type": "signal", "data": ' + "[" * 30_000 + "]" * 30_000 + "}",
        '{"type": "signal", "data": "\\ud800"}',
        '{"type": "signal", "data": NaN}',
        '{"type": []}',
    ],
    ids=["970-deep", "30000-deep", "surrogate", "nan", "type-list"],
)
def test_signalling_surprises_are_bad_json_and_the_stream_goes_on(message: str) -> None:
    with TestClient(mount(ByUser(max_signal_size=100_000))) as client:
        publisher = client.connect("/stream/s?role=publish&user=ada")
        viewer = client.connect("/stream/s")
        publisher.receive_all()
        viewer.receive_all()
        viewer.send(message)
        reply = viewer.receive_json()
        assert reply["code"] in ("bad_json", "unknown_type")
        viewer.send_json({"type": "signal", "data": {"sdp": "offer"}})
        assert json.loads(publisher.receive_all()[-1])["data"] == {"sdp": "offer"}


def test_a_signalling_message_is_bounded_in_bytes_not_characters() -> None:
    with TestClient(mount(ByUser(max_signal_size=60))) as client:
        publisher = client.connect("/stream/s?role=publish&user=ada")
        viewer = client.connect("/stream/s")
        publisher.receive_all()
        viewer.receive_all()
        fits = json.dumps({"type": "signal", "data": "é" * 15}, ensure_ascii=False)
        assert len(fits.encode()) == 60  # just at the bound
        viewer.send(fits)
        assert json.loads(publisher.receive_all()[-1])["data"] == "é" * 15
        over = json.dumps({"type": "signal", "data": "é" * 16}, ensure_ascii=False)
        assert len(over) < 60 < len(over.encode())  # within in characters, over in bytes
        viewer.send(over)
        assert viewer.receive_json() == {"type": "error", "code": "too_long"}
        assert publisher.receive_all() == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_streams", 0),
        ("max_streams", "10"),
        ("max_streams_per_user", None),
        ("max_waiting_streams_per_address", 0),
        ("max_waiting_streams_per_address", "16"),
        ("max_init_size", 3 * 2**20),  # more than half of max_buffered_amount
        ("max_json_depth", 1.5),
        ("viewer_buffer_bytes", [1]),
    ],
)
def test_bad_options_are_refused_by_name(option: str, value: object) -> None:
    with pytest.raises(UsageError, match=option):
        StreamServer(**{option: value})


class Held(ByUser):
    """Decides every handshake later, so two can pass the checks before either opens."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.pending: list[tuple[Deferred, object]] = []

    def authenticate(self, request: Request) -> object:
        decision = Deferred()
        self.pending.append((decision, super().authenticate(request)))
        return decision

    def decide_all(self) -> None:
        for decision, user in self.pending:
            decision.accept(user)
        self.pending.clear()


PUBLISH_S = "/stream/s?role=publish&user=ada"


@pytest.mark.parametrize(
    ("options", "first", "second", "code", "reason"),
    [
        (
            {},
            PUBLISH_S,
            "/stream/s?role=publish&user=bob",
            1008,
            "this stream already has a publisher",
        ),
        (
            {"max_streams_per_user": 1},
            PUBLISH_S,
            "/stream/t?role=publish&user=ada",
            1008,
            "this user already publishes all the streams it may",
        ),
        (
            {"max_streams": 1},
            PUBLISH_S,
            "/stream/t?role=publish&user=bob",
            1013,
            "this server carries all the streams it can",
        ),
        (
            {"max_waiting_streams_per_address": 1},
            "/stream/s",
            "/stream/t",
            1008,
            "this address already waits on all the streams it may",
        ),
    ],
)
def test_a_handshake_that_lost_a_race_for_a_bound_is_closed(
    options: dict[str, int], first: str, second: str, code: int, reason: str
) -> None:
    stream = Held(**options)
    with TestClient(mount(stream)) as client:
        winner = client.connect(first)
        loser = client.connect(second)
        stream.decide_all()
        client.pump()
        assert winner.receive_json()["type"] in ("publishing", "viewing")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                loser.receive()
        assert (closed.value.code, closed.value.reason) == (code, reason)
        winner.close()
        assert stream._streams == {} and stream._publishing == Counter()
        assert stream._waiting == Counter() and stream._live == 0


def test_the_seed_name_takes_the_options() -> None:
    assert create_stream_server(max_streams=5).max_streams == 5
