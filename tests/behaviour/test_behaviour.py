"""Behaviour every way of serving must show: the same bodies for every harness."""

from __future__ import annotations

import threading

import pytest

from spoc_sockets import ChannelServer, Connection, Deferred, Reject, Request, Router

from ..frames import client_frame, close_frame_code, status_of, upgrade_request
from .harness import Closed, Harness, Rejected


class Echo(ChannelServer):
    max_message_size = 32 * 2**20
    max_buffered_amount = 64 * 2**20

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class Room(ChannelServer):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        self.broadcast(message, exclude=conn)


class Recorder(ChannelServer):
    """Closes on command, raises on "boom", remembers how connections ended."""

    max_message_size = 1024
    ping_interval = 1.0  # short enough to test, long enough for a loaded CI machine
    ping_timeout = 1.0
    close_timeout = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[tuple[int, str]] = []

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("secret detail")
        if isinstance(message, str) and message.startswith("close "):
            conn.close(int(message.split()[1]), "as asked")

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append((code, reason))


class Guarded(ChannelServer):
    origins = ("https://app.example", None)

    def authenticate(self, request: Request) -> object:
        token = request.query.get("token")
        if token == "forbidden":
            raise Reject(403, "not for you")
        if token is None:
            raise Reject(401, "token required")
        return token

    def on_connect(self, conn: Connection) -> None:
        conn.send(f"hello {conn.user}")


def make_router() -> Router:
    router = Router(handshake_timeout=2.0)
    router.add("/echo", Echo())
    router.add("/room", Room())
    router.add("/record", Recorder())
    router.add("/guarded", Guarded())
    return router


SIZES = [0, 1, 125, 126, 65535, 65536, 2**20, 16 * 2**20]


@pytest.mark.parametrize("size", SIZES)
def test_echo_text_and_binary(serve: Harness, size: int) -> None:
    with serve(make_router()) as served:
        client = served.connect("/echo")
        text = "é" * (size // 2) + "a" * (size % 2)
        client.send(text)
        assert client.receive() == text
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        client.send(data)
        assert client.receive() == data
        client.close()


def test_broadcast_reaches_every_other_client(serve: Harness) -> None:
    with serve(make_router()) as served:
        clients = [served.connect("/room") for _ in range(200)]
        served.wait_for(lambda: len(served.router.upgraded) == 200)
        clients[0].send("to all")
        for client in clients[1:]:
            assert client.receive() == "to all"
        clients[0].send(b"\x00\x01")
        assert clients[-1].receive() == b"\x00\x01"
        for client in clients:
            client.close()
        served.wait_for(lambda: not served.router.upgraded)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/nowhere", 404), ("/guarded", 401), ("/guarded?token=forbidden", 403)],
)
def test_refusals_before_upgrade(serve: Harness, path: str, status: int) -> None:
    with serve(make_router()) as served:
        with pytest.raises(Rejected) as refused:
            served.connect(path)
        assert refused.value.status == status
        assert not served.router.upgraded


def test_origin_not_allowed_is_403(serve: Harness) -> None:
    with serve(make_router()) as served:
        with pytest.raises(Rejected) as refused:
            served.connect("/guarded?token=t", headers=[("Origin", "https://evil.example")])
        assert refused.value.status == 403
        client = served.connect("/guarded?token=t", headers=[("Origin", "https://app.example")])
        assert client.receive() == "hello t"
        client.close()


BAD_HANDSHAKES = [
    (upgrade_request("/echo", method="POST", upgrade="", key=None, version=""), 405, b"Allow: GET"),
    (upgrade_request("/echo", upgrade="", key=None, version=""), 426, b"Upgrade: websocket"),
    (upgrade_request("/echo", version="8"), 426, b"Sec-WebSocket-Version: 13"),
    (upgrade_request("/nowhere"), 404, b"Connection: close"),
]
BAD_HANDSHAKE_BYTES = [
    (upgrade_request("/echo", method="POST"), 405, b"Allow: GET"),
    (upgrade_request("/echo", key="short"), 400, b"Connection: close"),
    (upgrade_request("/echo", version=""), 426, b"Sec-WebSocket-Version: 13"),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, b""),
    (b"NOT HTTP AT ALL\r\n\r\n", 400, b""),
]


def check_answer(raw_request: bytes, answer: bytes, status: int, header: bytes) -> None:
    assert status_of(answer) == status, (raw_request[:60], answer[:200])
    assert header.lower() in answer.partition(b"\r\n\r\n")[0].lower()


@pytest.mark.parametrize(("request_bytes", "status", "header"), BAD_HANDSHAKES)
def test_bad_handshakes_get_their_status(
    serve: Harness, request_bytes: bytes, status: int, header: bytes
) -> None:
    with serve(make_router()) as served:
        raw = served.raw()
        raw.send(request_bytes)
        check_answer(request_bytes, raw.read_all(), status, header)  # read until closed
        assert not served.router.upgraded


@pytest.mark.parametrize(("request_bytes", "status", "header"), BAD_HANDSHAKE_BYTES)
def test_malformed_handshakes_get_their_status(
    serve_bytes: Harness, request_bytes: bytes, status: int, header: bytes
) -> None:
    with serve_bytes(make_router()) as served:
        raw = served.raw()
        raw.send(request_bytes)
        check_answer(request_bytes, raw.read_all(), status, header)  # read until closed
        assert not served.router.upgraded


def test_slowloris_handshake_gets_408_at_its_deadline(serve_bytes: Harness) -> None:
    with serve_bytes(make_router()) as served:
        raw = served.raw()
        raw.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        assert status_of(raw.read_all()) == 408


def test_client_close_code_reaches_on_close(serve: Harness) -> None:
    router = make_router()
    recorder = router.channels["/record"]
    assert isinstance(recorder, Recorder)
    with serve(router) as served:
        client = served.connect("/record")
        client.close(4000, "bye")
        served.wait_for(lambda: recorder.closed == [(4000, "bye")])
        assert not served.router.upgraded


@pytest.mark.parametrize(
    ("message", "code"),
    [("close 4001", 4001), ("close 1000", 1000), ("boom", 1011), ("x" * 2000, 1009)],
)
def test_server_close_codes(serve: Harness, message: str, code: int) -> None:
    router = make_router()
    recorder = router.channels["/record"]
    assert isinstance(recorder, Recorder)
    with serve(router) as served:
        client = served.connect("/record")
        client.send(message)
        with pytest.raises(Closed):
            client.receive()
        assert client.close_code == code
        served.wait_for(lambda: not served.router.upgraded)
        assert recorder.closed and recorder.closed[0][0] == code
        assert "secret" not in recorder.closed[0][1]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(0x1, b"\xff\xfe"), 1007),
        (client_frame(0x1, b"unmasked", mask=False), 1002),
        (client_frame(0x3, b"reserved opcode"), 1002),
        (client_frame(0x0, b"continuation of nothing"), 1002),
        (client_frame(0x9, b"p" * 10, fin=False), 1002),
        (client_frame(0x1, b"x", rsv=4), 1002),
    ],
)
def test_protocol_errors_close_with_their_code(
    serve_bytes: Harness, frame: bytes, code: int
) -> None:
    with serve_bytes(make_router()) as served:
        raw = served.raw()
        raw.send(upgrade_request("/record") + frame)
        assert close_frame_code(raw.read_all()) == code
        served.wait_for(lambda: not served.router.upgraded)


def test_unanswered_pings_close_with_1011(serve_bytes: Harness) -> None:
    with serve_bytes(make_router()) as served:
        raw = served.raw()
        raw.send(upgrade_request("/record"))  # and never answers a ping
        assert close_frame_code(raw.read_all()) == 1011
        served.wait_for(lambda: not served.router.upgraded)


def test_deferred_authentication_decided_by_a_thread(serve: Harness) -> None:
    router = Router()
    decisions: list[Deferred] = []

    @router.channel("/later")
    class Later(ChannelServer):
        def authenticate(self, request: Request) -> object:
            deferred = Deferred()
            user = request.query.get("user")
            decisions.append(deferred)
            threading.Thread(
                target=lambda: deferred.accept(user) if user else deferred.reject(401, "who?")
            ).start()
            return deferred

        def on_connect(self, conn: Connection) -> None:
            conn.send(f"welcome {conn.user}")

    with serve(router) as served:
        client = served.connect("/later?user=ada")
        served.wait_for(lambda: len(router.upgraded) == 1)
        assert client.receive() == "welcome ada"
        with pytest.raises(Rejected) as refused:
            served.connect("/later")
        assert refused.value.status == 401


def test_the_getting_started_router(serve: Harness) -> None:
    """The router of the getting-started example, as written, behind every harness."""
    from ..test_invariants import example_blocks

    code = next(block for block in example_blocks() if "Router()" in block)
    prelude = "def verify(token):\n    return {'t': 'ada'}.get(token)\n"
    namespace: dict[str, object] = {}
    exec(compile(prelude + code, "getting-started.rst", "exec"), namespace)
    router = namespace["router"]
    assert isinstance(router, Router)
    with serve(router) as served:
        ada = served.connect("/notifications?token=t")
        other = served.connect("/notifications?token=t")
        served.wait_for(lambda: len(router.upgraded) == 2)
        ada.send("hello")
        assert ada.receive() == "hello"
        assert other.receive() == "hello"
        with pytest.raises(Rejected) as refused:
            served.connect("/notifications?token=wrong")
        assert refused.value.status == 401
        viewer = served.connect("/stream/lecture-1")
        assert b'"viewing"' in str(viewer.receive()).encode()
        ada.close()
        other.close()
        viewer.close()
        served.wait_for(lambda: not router.upgraded)
