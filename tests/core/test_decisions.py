"""Each decision a connection makes is made once, for both kinds of connection: the same
test runs on a byte-level connection (h11 + wsproto, through a hub) and on a
:class:`~spoc_sockets._session.Session` on an ``ActionQueue`` (what ASGI servers use), and
expects the same answer from both."""

from __future__ import annotations

import ast
import inspect

import pytest

from spoc_sockets import (
    ChannelServer,
    Connection,
    ConnectionState,
    Deferred,
    Hub,
    Request,
    Router,
    _session,
)
from spoc_sockets._session import Action, Refuse, Session
from spoc_sockets.channel import CloseRequest, Outgoing

from ..frames import upgrade_request
from .wire import Messages as MessageLevel
from .wire import Peer, Recorder, close_payload, frame


class Driver:
    """One connection to ``router``, driven by the test through one interface."""

    session: Session
    refusal: tuple[int, bytes] | None  # the status and body of a refused handshake
    close: tuple[int, str] | None  # the first close the server asked for
    sent: list[str | bytes]  # the messages the server sent

    def shutdown(self) -> None:
        raise AssertionError("implemented by each driver")

    def message(self, text: str) -> None:
        raise AssertionError("implemented by each driver")

    def end(self) -> None:
        """The peer closes with 1000 (the server confirms or reports it)."""
        raise AssertionError("implemented by each driver")


class Bytes(Driver):
    def __init__(self, router: Router, target: str, *, refusing: bool = False) -> None:
        hub = Hub(router)
        if refusing:
            hub.shutdown(0.0)  # before the transport is accepted: its handshake is refused
        self.peer = Peer(router, hub=hub)
        self.session = self.peer.server.session
        self.peer.send(upgrade_request(target))
        self._read()

    def _read(self) -> None:
        if not self.peer.out:
            self.refusal = None
            self.close, self.sent = None, []
            return
        answer = self.peer.answer
        self.refusal = None if answer.status == 101 else (answer.status, answer.body)
        self.close = self.peer.close if answer.status == 101 else None
        frames = self.peer.frames if answer.status == 101 else []
        self.sent = [f.payload.decode() for f in frames if f.opcode == 0x1]

    def shutdown(self) -> None:
        self.peer.hub.shutdown(self.peer.now)
        self.peer.flush()
        self._read()

    def message(self, text: str) -> None:
        self.peer.send(frame(0x1, text.encode()))
        self._read()

    def end(self) -> None:
        self.peer.send(frame(0x8, close_payload(1000)))


class Messages(Driver):
    def __init__(self, router: Router, target: str, *, refusing: bool = False) -> None:
        request = Request.parse("GET", target, [("host", "example")])
        self.messages = MessageLevel(router, request, 0.0, refusing=refusing)
        self.session = self.messages.session
        self.actions: list[Action] = []
        self._read()

    def _read(self) -> None:
        actions = self.messages.actions(0.0)
        self.messages.delivered(actions)
        self.actions += actions
        refusals = [a for a in self.actions if isinstance(a, Refuse)]
        self.refusal = (refusals[0].status, refusals[0].body) if refusals else None
        closes = [(a.code, a.reason) for a in self.actions if isinstance(a, CloseRequest)]
        self.close = closes[0] if closes else None
        self.sent = [a.message for a in self.actions if isinstance(a, Outgoing)]

    def shutdown(self) -> None:
        self.session.shutdown()
        self._read()

    def message(self, text: str) -> None:
        self.messages.receive(text, 0.0)
        self._read()

    def end(self) -> None:
        self.messages.disconnected(1000)


PATHS = [Bytes, Messages]


def served(path: str, channel: ChannelServer) -> Router:
    router = Router()
    router.add(path, channel)
    return router


@pytest.mark.parametrize("kind", PATHS)
def test_no_channel_at_the_path_is_404_naming_the_path(kind: type[Driver]) -> None:
    router = served("/c", Recorder())
    driver = kind(router, "/nowhere?token=secret")
    assert driver.refusal == (404, b"no channel at /nowhere\n")
    assert driver.session.state is ConnectionState.CLOSED
    assert router.stats().unrouted_refused == {404: 1}


@pytest.mark.parametrize("kind", PATHS)
def test_path_params_are_decoded_per_segment_and_counted_on_the_template(
    kind: type[Driver],
) -> None:
    channel = Recorder()
    router = served("/rooms/{room}", channel)
    driver = kind(router, "/rooms/a%2Fb%20c?x=1")
    assert driver.refusal is None
    (conn,) = channel.connected
    assert conn.request.path_params == {"room": "a/b c"}
    assert conn.route == "/rooms/{room}"
    assert router.stats()["/rooms/{room}"].accepted == 1


@pytest.mark.parametrize("kind", PATHS)
def test_a_handshake_while_shutting_down_is_503_even_for_an_unknown_path(
    kind: type[Driver],
) -> None:
    channel = Recorder()
    router = served("/c", channel)
    for target in ("/c", "/nowhere"):
        driver = kind(router, target, refusing=True)
        assert driver.refusal == (503, b"the server is shutting down\n")
    assert channel.connected == [] and router.upgraded == frozenset()


class Undecided(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.deferred = Deferred()

    def authenticate(self, request: Request) -> object:
        return self.deferred


@pytest.mark.parametrize("kind", PATHS)
def test_an_undecided_handshake_is_refused_503_by_a_shutdown(kind: type[Driver]) -> None:
    channel = Undecided()
    router = served("/c", channel)
    driver = kind(router, "/c")
    assert driver.refusal is None and driver.session.state is ConnectionState.CONNECTING
    driver.shutdown()
    assert driver.refusal == (503, b"the server is shutting down\n")
    channel.deferred.accept("late")
    assert channel.connected == [] and router.upgraded == frozenset()


@pytest.mark.parametrize("kind", PATHS)
def test_max_message_size_counts_utf8_bytes_and_closes_1009(kind: type[Driver]) -> None:
    channel = Recorder(max_message_size=5)
    driver = kind(served("/c", channel), "/c")
    driver.message("12345")  # exactly the limit
    assert driver.close is None
    driver.message("ééé")  # three characters, six bytes
    assert driver.close == (1009, "message over 5 bytes")
    assert channel.messages == ["12345"]


class Flood(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        for n in range(3):
            conn.send(f"{n}" * 40)  # 42 bytes each on the wire


@pytest.mark.parametrize("kind", PATHS)
def test_overflow_close_drops_the_queued_output_and_closes_1008(kind: type[Driver]) -> None:
    driver = kind(served("/c", Flood(max_buffered_amount=100)), "/c")
    driver.message("go")
    assert driver.close == (1008, "slow consumer")
    assert driver.sent == []


@pytest.mark.parametrize("kind", PATHS)
def test_overflow_drop_counts_what_it_dropped_and_keeps_the_connection(
    kind: type[Driver],
) -> None:
    driver = kind(served("/c", Flood(max_buffered_amount=100, overflow="drop")), "/c")
    driver.message("go")
    assert driver.sent == ["0" * 40, "1" * 40]
    assert driver.close is None
    conn = driver.session.connection
    assert conn is not None and conn.dropped == 1
    assert driver.session.state is ConnectionState.OPEN


def test_the_session_decides_without_knowing_how_messages_travel() -> None:
    """The decisions are written once because the session sees no wire format: it
    imports no parser, no connection and no adapter; it reaches its carrier only
    through the ``Wire`` protocol."""
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(_session))):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"h11", "wsproto", "_connection", "_hub", "asgi"}, imported


def test_a_message_that_came_with_the_request_head_counts_as_input_when_it_came() -> None:
    """The byte wire holds such frames until ``on_connect`` ran; the idle clock counts
    from when they came."""
    channel = Recorder(idle_timeout=5.0, ping_interval=None)
    peer = Peer(served("/c", channel), now=1.0)
    peer.send(upgrade_request("/c") + frame(0x1, b"early"))
    assert channel.messages == ["early"]
    peer.advance(4.5)
    assert peer.close is None
    peer.advance(0.5)  # 6.0: idle since 1.0
    assert peer.close == (1001, "idle timeout")


def test_with_an_idle_timeout_the_keepalive_still_pings_on_time() -> None:
    channel = Recorder(idle_timeout=30.0, ping_interval=5.0, ping_timeout=None)
    peer = Peer(served("/c", channel))
    peer.handshake("/c")
    assert peer.server.next_deadline() == 5.0
    peer.advance(5.0)
    assert [f.opcode for f in peer.frames] == [0x9]  # the ping, 25 s before the idle limit


@pytest.mark.parametrize("kind", PATHS)
def test_the_handle_is_none_again_once_the_connection_ended(kind: type[Driver]) -> None:
    channel = Recorder()
    driver = kind(served("/c", channel), "/c")
    assert driver.session.connection is channel.connected[0]
    driver.end()
    assert driver.session.connection is None
    assert channel.closed == [(1000, "")]
