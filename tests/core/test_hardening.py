"""The core against misuse and hostile input: hooks, options, fragments, floods."""

from __future__ import annotations

import gc
import math
import tracemalloc
import warnings

import pytest

from spoc_sockets import ChannelServer, Connection, Hub, Request, Router, UsageError
from spoc_sockets._connection import EVENTS_PER_TURN

from ..frames import upgrade_request
from .wire import Peer, Recorder, close_payload, frame, router_with

# -- hooks are plain functions -----------------------------------------------------------


def _async(hook: str) -> type[ChannelServer]:
    async def async_hook(self: ChannelServer, *args: object) -> None:
        return None

    return type("Async", (ChannelServer,), {hook: async_hook})


@pytest.mark.parametrize("hook", ["check_origin", "select_subprotocol"])
def test_async_negotiation_hooks_are_always_refused(hook: str) -> None:
    with pytest.raises(UsageError, match=f"Async.{hook} is async def: it must be a def"):
        Router().add("/a", _async(hook)())


@pytest.mark.parametrize("hook", ["authenticate", "on_connect", "on_message", "on_close"])
def test_async_hooks_are_refused_where_hooks_are_plain(hook: str) -> None:
    router = Router()
    router.add("/a", _async(hook)())  # a server that awaits them may serve this router
    with pytest.raises(UsageError, match=f"Async.{hook} is async def: this server runs"):
        Hub(router)  # a hub without spawn: hooks run as plain functions
    later = Router()
    Hub(later)
    with pytest.raises(UsageError, match="async def"):
        later.channel("/a")(_async(hook))
    assert not later.channels


def test_an_async_generator_hook_is_refused() -> None:
    class Gen(ChannelServer):
        async def on_message(self, conn: Connection, message: str | bytes) -> None:  # type: ignore[override]
            yield  # type: ignore[misc]

    with pytest.raises(UsageError, match="async def"):
        Router().add("/g", Gen())


def test_a_hook_returning_a_coroutine_fails_with_1011_and_no_warning() -> None:
    class Sneaky(Recorder):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            return self.later(message)  # type: ignore[func-returns-value]

        async def later(self, message: str | bytes) -> None:
            self.messages.append(message)

    sneaky = Sneaky()
    peer = Peer(router_with("/s", sneaky))
    peer.send(upgrade_request("/s"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine was never awaited" would fail here
        peer.send(frame(0x1, b"hi"))
        gc.collect()
    assert peer.close_code == 1011
    assert sneaky.messages == []


# -- options are validated, naming the option and the value -------------------------------


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"origins": "https://learn.example.com"}, "origins is a collection"),
        ({"origins": ["https://learn.example.com/"]}, "is not an origin"),
        ({"origins": [42]}, "is not an origin"),
        ({"origins": 3}, "origins is a collection"),
        ({"subprotocols": "chat"}, "subprotocols is a sequence"),
        ({"subprotocols": ["a b"]}, "not a subprotocol name"),
        ({"subprotocols": [b"chat"]}, "not a subprotocol name"),
        ({"ping_interval": "20"}, "ping_interval is a positive number or None, not '20'"),
        ({"ping_timeout": -1}, "ping_timeout"),
        ({"close_timeout": None}, "close_timeout is a positive number, not None"),
        ({"close_timeout": math.inf}, "close_timeout"),
        ({"max_message_size": True}, "max_message_size is a positive whole number"),
        ({"max_message_size": 1.5}, "max_message_size"),
        ({"max_fragments": 0}, "max_fragments"),
        ({"max_control_rate": math.nan}, "max_control_rate"),
        ({"max_connections": "10"}, "max_connections"),
        ({"max_buffered_amount": -5}, "max_buffered_amount"),
        ({"compression": "yes"}, "compression is True or False"),
        ({"overflow": "block"}, "overflow is 'close' or 'drop'"),
    ],
)
def test_bad_channel_options_are_refused(options: dict[str, object], words: str) -> None:
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ChannelServer(**options)  # type: ignore[arg-type]


def test_bad_option_as_a_class_attribute_is_refused_too() -> None:
    class Loose(ChannelServer):
        origins = "https://learn.example.com"  # type: ignore[assignment]

    with pytest.raises(UsageError, match="origins is a collection"):
        Loose()


@pytest.mark.parametrize(
    "options",
    [
        {"handshake_timeout": -1},
        {"handshake_timeout": "10"},
        {"max_request_size": 0},
        {"max_headers": 2.5},
        {"max_connections_per_address": False},
        {"max_handshake_rate": -0.5},
    ],
)
def test_bad_router_options_are_refused(options: dict[str, object]) -> None:
    name = next(iter(options))
    with pytest.raises(UsageError, match=name):
        Router(**options)  # type: ignore[arg-type]


# -- fragments cost their bytes ----------------------------------------------------------


def test_a_message_of_tiny_fragments_costs_a_small_multiple_of_its_size() -> None:
    size = 100_000
    recorder = Recorder(max_fragments=None, max_message_size=2 * size)
    peer = Peer(router_with("/r", recorder))
    peer.send(upgrade_request("/r"))
    one = frame(0x0, b"a", fin=False)
    data = frame(0x1, b"a", fin=False) + one * (size - 2) + frame(0x0, b"a")
    tracemalloc.start()
    try:
        for i in range(0, len(data), 65536):
            peer.send(data[i : i + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recorder.messages == ["a" * size]
    assert peak < 4 * size + 2**18  # once ~35x the payload: an object per fragment


def test_a_closed_connection_frees_its_partial_message_without_the_collector() -> None:
    router = router_with("/r", Recorder(max_message_size=2**21))
    gc.collect()
    gc.disable()
    try:
        tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(10):
            peer = Peer(router)
            peer.send(upgrade_request("/r") + frame(0x2, b"x" * 2**20, fin=False))
            peer.send(frame(0x8, close_payload(1000)))
            assert peer.server.should_close
            del peer
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert after - before < 2**20  # ten partial messages of 1 MiB were not kept
    assert not router.upgraded


# -- one connection's turn is bounded ------------------------------------------------------


def test_a_burst_is_handled_a_bounded_number_of_frames_per_turn() -> None:
    recorder = Recorder(max_control_rate=None)
    peer = Peer(router_with("/r", recorder))
    peer.send(upgrade_request("/r"))
    burst = [f"m{i}".encode() for i in range(5 * EVENTS_PER_TURN)]
    peer.server.receive_data(b"".join(frame(0x1, m) for m in burst), 0.0)
    assert len(recorder.messages) == EVENTS_PER_TURN
    assert peer.server.input_paused
    turns = 1
    while peer.server.input_paused:
        peer.server.data_to_send(0.0)
        turns += 1
        assert len(recorder.messages) <= turns * EVENTS_PER_TURN
    assert recorder.messages == [m.decode() for m in burst]  # all, in order
    assert 5 <= turns <= 6  # a last turn may only learn that nothing is left


def test_control_frames_within_the_rate_are_answered() -> None:
    recorder = Recorder(max_control_rate=1)  # 10 per window
    peer = Peer(router_with("/r", recorder))
    peer.send(upgrade_request("/r"))
    peer.send(frame(0x9, b"p") * 10)
    assert peer.close_code is None
    peer.advance(10.0)  # a new window
    peer.send(frame(0xA, b"unsolicited") * 10)
    assert peer.close_code is None
    peer.send(frame(0x9, b"p"))
    assert peer.close_code == 1008


def test_authenticate_is_not_run_for_a_refused_origin() -> None:
    class Counting(ChannelServer):
        origins = ("https://app.example",)
        calls = 0

        def authenticate(self, request: Request) -> object:
            Counting.calls += 1
            return "user"

    peer = Peer(router_with("/c", Counting()))
    peer.send(upgrade_request("/c", extra="Origin: https://app.example.evil\r\n"))
    assert peer.answer.status == 403
    assert Counting.calls == 0


def test_a_long_advance_runs_every_deadline_in_order() -> None:
    """advance(60) is two keepalive cycles, as real time would be: the ping sent at 20 s
    is unanswered at 40 s, so the connection closes with 1011."""
    from spoc_sockets.testing import ConnectionClosed, TestClient

    router = Router()
    router.add("/r", Recorder(ping_interval=20.0, ping_timeout=20.0))
    with TestClient(router) as client, client.connect("/r", answer_pings=False) as ws:
        client.advance(60)
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert closed.value.code == 1011
        assert client.now == 60


def test_idle_timeout_counts_messages_not_pings() -> None:
    from spoc_sockets.testing import ConnectionClosed, TestClient

    router = Router()
    router.add("/r", Recorder(ping_interval=20.0, ping_timeout=20.0, idle_timeout=30.0))
    with TestClient(router) as client, client.connect("/r") as ws:  # answers every ping
        client.advance(25)
        ws.send("still here")
        client.advance(29)  # 54 s: 29 s after the message
        assert ws.close_code is None
        client.advance(1)
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (1001, "idle timeout")
        assert client.now == 55


def test_a_finished_connection_is_freed_without_the_collector() -> None:
    import weakref

    router = router_with("/r", ChannelServer())
    gc.collect()
    gc.disable()
    try:
        peer = Peer(router)
        handle = weakref.ref(peer.handshake("/r"))
        peer.send(frame(0x8, close_payload(1000)))
        assert peer.server.should_close
        assert handle() is None  # the connection no longer keeps its handle in a cycle
    finally:
        gc.enable()


def test_handshakes_still_deciding_hold_their_places() -> None:
    """max_connections_per_address and max_connections count handshakes whose
    authenticate has not decided yet, not only open connections."""
    from spoc_sockets import Deferred

    decisions: list[Deferred] = []

    class Later(ChannelServer):
        max_connections = 3

        def authenticate(self, request: Request) -> object:
            decisions.append(Deferred())
            return decisions[-1]

    router = router_with("/l", Later(), max_connections_per_address=2)
    hub = Hub(router)
    address = ("192.0.2.7", 40000)
    peers = [Peer(router, hub=hub, peer=address) for _ in range(3)]
    for peer in peers:
        peer.send(upgrade_request("/l"))
    assert len(decisions) == 2
    assert peers[2].answer.status == 429  # refused at once: two places are taken
    decisions[0].accept("a")
    decisions[1].reject(401)
    for peer in peers[:2]:
        peer.flush()
    assert peers[0].answer.status == 101 and peers[1].answer.status == 401
    late = Peer(router, hub=hub, peer=address)
    late.send(upgrade_request("/l"))  # the refused handshake gave its place back
    assert len(decisions) == 3
    assert router.channels["/l"]._admitted == 2


def test_a_later_refusal_reaches_the_test_client() -> None:
    from spoc_sockets import Deferred
    from spoc_sockets.testing import HandshakeRejected, TestClient

    class Later(ChannelServer):
        decision = Deferred()

        def authenticate(self, request: Request) -> object:
            return self.decision

    router = router_with("/l", Later())
    with TestClient(router) as client:
        ws = client.connect("/l")
        assert not ws.open
        Later.decision.reject(401, "no")
        with pytest.raises(HandshakeRejected) as refused:
            ws.receive()
        assert (refused.value.status, refused.value.body) == (401, b"no")
