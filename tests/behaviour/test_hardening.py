"""Hostile clients, on every harness: each test pins a defect that once let one through."""

from __future__ import annotations

import threading

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router, threads

from ..frames import client_frame, close_frame_code, status_of, upgrade_request
from .harness import Harness, Rejected
from .harness_net import LEGACY


class Echo(ChannelServer):
    ping_interval = None

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class Seen(ChannelServer):
    """Remembers every message, in order, from every client."""

    ping_interval = None
    max_fragments = None

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str | bytes] = []

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        self.messages.append(message)


def test_a_silent_connection_is_closed_at_the_handshake_deadline(serve_bytes: Harness) -> None:
    """A TCP connection that never sends a byte is closed at ``handshake_timeout``, even
    on a server where nothing else happens (trio once kept it open for good)."""
    with serve_bytes(Router(handshake_timeout=1.0)) as served:
        raw = served.raw()
        assert raw.read_all() == b""  # the server closed it (a hang fails the bounded read)


def test_the_origin_is_matched_exactly(serve: Harness) -> None:
    router = Router()
    router.add("/e", Echo(origins=("https://learn.example.com",)))
    with serve(router) as served:
        served.connect("/e", headers=[("Origin", "https://learn.example.com")]).close()
        served.connect("/e", headers=[("Origin", "HTTPS://Learn.Example.COM")]).close()
        for origin in ("https://learn.exam", "a", "https://learn.example.com.evil.net"):
            with pytest.raises(Rejected) as refused:
                served.connect("/e", headers=[("Origin", origin)])
            assert refused.value.status == 403
        with pytest.raises(Rejected) as refused:
            served.connect("/e")  # no Origin at all: 403, not 500
        assert refused.value.status == 403


class Sneaky(Echo):
    """A plain ``authenticate`` that returns a coroutine (of an async helper)."""

    def authenticate(self, request: Request) -> object:
        return self.check(request)

    async def check(self, request: Request) -> object:
        raise Reject(401)


def test_a_returned_coroutine_is_awaited_never_taken_as_the_user(serve_async: Harness) -> None:
    router = Router()
    router.add("/s", Sneaky())
    with serve_async(router) as served:
        with pytest.raises(Rejected) as refused:
            served.connect("/s")
        assert refused.value.status == 401
        assert not router.upgraded


def test_a_returned_coroutine_fails_the_handshake_where_hooks_are_plain() -> None:
    router = Router()
    router.add("/s", Sneaky())
    with threads.serve(router, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{server.port}/s", open_timeout=10, **LEGACY)
        assert refused.value.response.status_code == 500
        assert not router.upgraded


@pytest.mark.parametrize(("verdict", "status"), [(False, 403), (Reject(401, "no"), 401)])
def test_authenticate_returning_false_or_a_reject_refuses(
    serve: Harness, verdict: object, status: int
) -> None:
    class Gate(Echo):
        def authenticate(self, request: Request) -> object:
            return verdict

    router = Router()
    router.add("/g", Gate())
    with serve(router) as served:
        with pytest.raises(Rejected) as refused:
            served.connect("/g")
        assert refused.value.status == status


def test_many_tiny_fragments_make_one_message(serve_bytes: Harness) -> None:
    seen = Seen()
    router = Router()
    router.add("/seen", seen)
    text = "é" * 3000  # 6000 bytes of UTF-8, split inside characters too
    data = text.encode()
    frames = [client_frame(0x1, data[:1], fin=False)]
    frames += [client_frame(0x0, data[i : i + 1], fin=False) for i in range(1, len(data) - 1)]
    frames += [client_frame(0x0, b"", fin=False)] * 100  # empty continuation frames
    frames.append(client_frame(0x0, data[-1:]))
    with serve_bytes(router) as served:
        raw = served.raw()
        raw.send(upgrade_request("/seen") + b"".join(frames) + client_frame(0x8, b"\x03\xe8"))
        assert close_frame_code(raw.read_all()) == 1000
        assert seen.messages == [text]


def test_too_many_fragments_close_with_1009(serve_bytes: Harness) -> None:
    router = Router()
    router.add("/e", Echo(max_fragments=100, close_timeout=1))
    frames = client_frame(0x2, b"", fin=False) + client_frame(0x0, b"", fin=False) * 200
    with serve_bytes(router) as served:
        raw = served.raw()
        raw.send(upgrade_request("/e") + frames)
        assert close_frame_code(raw.read_all()) == 1009
        served.wait_for(lambda: not router.upgraded)


def test_a_ping_flood_closes_with_1008(serve_bytes: Harness) -> None:
    router = Router()
    router.add("/e", Echo(max_control_rate=5, close_timeout=1))  # 50 per 10-second window
    with serve_bytes(router) as served:
        raw = served.raw()
        raw.send(upgrade_request("/e") + client_frame(0x9, b"p") * 200)
        assert close_frame_code(raw.read_all()) == 1008
        served.wait_for(lambda: not router.upgraded)


def test_a_flood_of_frames_does_not_stall_other_clients(serve_bytes: Harness) -> None:
    """One client's burst is handled a bounded number of frames per turn: another
    client's message is handled before the burst is through."""
    seen = Seen()
    router = Router()
    router.add("/seen", seen)
    with serve_bytes(router) as served:
        flooder = served.raw()
        flooder.send(upgrade_request("/seen"))
        other = served.connect("/seen")
        served.wait_for(lambda: len(router.upgraded) == 2)
        flooder.send(b"".join(client_frame(0x1, b"f") for _ in range(20_000)))
        other.send("other")
        served.wait_for(lambda: len(seen.messages) == 20_001, timeout=60)
        assert seen.messages.index("other") < 20_000
        assert seen.messages.count("f") == 20_000
        flooder.close()
        other.close()


def test_per_channel_connection_limit_answers_503(serve: Harness) -> None:
    router = Router()
    router.add("/e", Echo(max_connections=2))
    with serve(router) as served:
        first, second = served.connect("/e"), served.connect("/e")
        with pytest.raises(Rejected) as refused:
            served.connect("/e")
        assert refused.value.status == 503
        first.close()
        served.wait_for(lambda: len(router.upgraded) == 1)
        served.connect("/e").close()
        second.close()


def test_per_address_connection_limit_answers_429(serve: Harness) -> None:
    router = Router(max_connections_per_address=2)
    router.add("/a", Echo())
    router.add("/b", Echo())
    with serve(router) as served:
        first, second = served.connect("/a"), served.connect("/b")  # over every channel
        with pytest.raises(Rejected) as refused:
            served.connect("/a")
        assert refused.value.status == 429
        first.close()
        served.wait_for(lambda: len(router.upgraded) == 1)
        served.connect("/a").close()
        second.close()


def test_handshake_rate_limit_answers_429(serve: Harness) -> None:
    router = Router(max_handshake_rate=1)  # 10 per 10-second window and address
    router.add("/e", Echo())
    with serve(router) as served:
        for _ in range(10):
            served.connect("/e").close()
        with pytest.raises(Rejected) as refused:
            served.connect("/e")
        assert refused.value.status == 429


def test_too_many_header_lines_answer_431(serve_bytes: Harness) -> None:
    router = Router(max_headers=20)
    router.add("/e", Echo())
    headers = "".join(f"X-H{i}: v\r\n" for i in range(30))
    with serve_bytes(router) as served:
        raw = served.raw()
        raw.send(upgrade_request("/e", extra=headers))
        assert status_of(raw.read_all()) == 431


def test_an_idle_client_is_closed_with_1001(serve: Harness) -> None:
    router = Router()
    router.add("/e", Echo(idle_timeout=1.0))
    with serve(router) as served:
        client = served.connect("/e")
        client.send("once")
        assert client.receive() == "once"
        served.wait_for(lambda: client.close_code is not None)  # a second later
        assert client.close_code == 1001
        served.wait_for(lambda: not router.upgraded)
