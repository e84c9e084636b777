"""A Session on an ActionQueue (the core of a connection an ASGI server parses), driven
directly with virtual time: its deadlines, and the answers it gives, exactly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

import pytest

from spoc_sockets import (
    ChannelServer,
    Connection,
    ConnectionState,
    Deferred,
    ProtocolError,
    Reject,
    Request,
    Router,
)
from spoc_sockets._session import Accept, Refuse
from spoc_sockets.channel import CloseRequest, Outgoing

from .wire import Echo, Messages, Recorder


class Undecided(Recorder):
    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.deferred = Deferred()

    def authenticate(self, request: Request) -> object:
        return self.deferred


class Counted:
    """One session on ``/c`` of ``router``, with its wake-ups counted."""

    def __init__(self, router: Router, now: float = 0.0) -> None:
        self.wakeups = 0
        request = Request.parse("GET", "/c", [("host", "example")])
        self.session = Messages(router, request, now, self._wake)

    def _wake(self) -> None:
        self.wakeups += 1


def open_session(channel: ChannelServer, now: float = 0.0) -> tuple[Router, Messages]:
    router = Router()
    router.add("/c", channel)
    session = Counted(router, now).session
    assert session.actions(now) == [Accept(None)]
    assert session.state is ConnectionState.OPEN
    return router, session


def test_an_undecided_deferred_is_refused_503_at_handshake_timeout() -> None:
    channel = Undecided()
    router = Router(handshake_timeout=3.0)
    router.add("/c", channel)
    session = Counted(router, now=100.0).session
    assert session.actions(100.0) == []
    assert session.next_deadline() == 103.0
    session.handle_timeout(102.999)  # too early: nothing happens
    assert session.actions(102.999) == []
    assert session.state is ConnectionState.CONNECTING
    session.handle_timeout(103.0)
    refusal = Refuse(503, (), b"the handshake was not decided in time\n")
    assert session.actions(103.0) == [refusal]
    assert session.done and session.next_deadline() is None
    channel.deferred.accept("late")  # a decision after the deadline is ignored
    assert session.actions(104.0) == []
    assert channel.connected == [] and router.upgraded == frozenset()


def test_a_deferred_decided_in_time_is_taken_at_the_next_actions() -> None:
    channel = Undecided()
    router = Router()
    router.add("/c", channel)
    wrapped = Counted(router)
    session = wrapped.session
    assert session.actions(0.0) == [] and wrapped.wakeups == 0
    channel.deferred.accept("ada")
    assert wrapped.wakeups == 1  # the adapter is told to call actions()
    assert session.actions(1.0) == [Accept(None)]
    assert session.connection is not None and session.connection.user == "ada"
    assert session.next_deadline() is None  # no handshake deadline once open
    session.handle_timeout(50.0)
    assert session.state is ConnectionState.OPEN


def test_a_close_the_server_never_confirms_ends_at_close_timeout() -> None:
    channel = Recorder(close_timeout=4.0)
    router, session = open_session(channel)
    conn = session.connection
    assert conn is not None
    conn.close(4000, "bye")
    assert session.actions(1.0) == [CloseRequest(4000, "bye")]
    assert session.state is ConnectionState.CLOSING
    assert session.next_deadline() == 5.0
    session.handle_timeout(4.999)
    assert not session.done and channel.closed == []
    session.handle_timeout(5.0)
    assert session.done
    assert channel.closed == [(4000, "bye")]
    assert router.upgraded == frozenset()
    session.disconnected(1006)  # the server's late report changes nothing
    assert channel.closed == [(4000, "bye")]


def test_a_close_the_server_confirms_keeps_our_code() -> None:
    channel = Recorder()
    router, session = open_session(channel)
    assert session.connection is not None
    session.connection.close(1001, "moving")
    session.actions(0.0)
    session.disconnected(1006)  # what the server reports after our close
    assert session.done and channel.closed == [(1001, "moving")]
    assert router.upgraded == frozenset()


def test_a_message_past_the_limit_is_1009_then_close_timeout() -> None:
    channel = Recorder(max_message_size=10, close_timeout=2.0)
    _, session = open_session(channel)
    session.receive("é" * 5, 0.0)  # 10 bytes: allowed
    session.receive("é" * 5 + "a", 1.0)  # 11 bytes
    assert channel.messages == ["é" * 5]
    assert session.actions(1.0) == [CloseRequest(1009, "message over 10 bytes")]
    session.receive("late", 1.5)  # ignored while closing
    assert channel.messages == ["é" * 5]
    assert session.next_deadline() == 3.0
    session.handle_timeout(3.0)
    assert session.done and channel.closed == [(1009, "message over 10 bytes")]


class Raises(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        raise RuntimeError("secret")


def test_a_hook_that_raises_is_1011_internal_error() -> None:
    channel = Raises()
    _, session = open_session(channel)
    session.receive(b"x", 0.0)
    assert session.actions(0.0) == [CloseRequest(1011, "internal error")]


@pytest.mark.parametrize("status", [401, 403])
def test_a_deferred_rejection_is_refused_with_its_status(status: int) -> None:
    channel = Undecided()
    router = Router()
    router.add("/c", channel)
    session = Counted(router).session
    channel.deferred.reject(status, "no", [("WWW-Authenticate", "Bearer")])
    assert session.actions(0.5) == [Refuse(status, (("WWW-Authenticate", "Bearer"),), b"no")]
    assert session.done


def test_a_session_refuses_unknown_paths_and_everything_while_shutting_down() -> None:
    router = Router()
    router.add("/c", Recorder())
    unknown = Messages(router, Request.parse("GET", "/nowhere?x=1", []), 0.0, lambda: None)
    assert unknown.actions(0.0) == [Refuse(404, (), b"no channel at /nowhere\n")]
    assert unknown.done
    request = Request.parse("GET", "/c", [])
    refusing = Messages(router, request, 0.0, lambda: None, refusing=True)
    assert refusing.actions(0.0) == [Refuse(503, (), b"the server is shutting down\n")]
    assert refusing.done and router.upgraded == frozenset()


def test_output_counts_until_the_server_took_it() -> None:
    channel = Recorder()
    _, session = open_session(channel)
    conn = session.connection
    assert conn is not None
    conn.send("abc")  # 2 bytes of frame header, 3 of payload
    conn.send(b"\x00" * 200)  # 4 + 200
    assert conn.buffered_amount == 209
    actions = session.actions(0.0)
    assert [a.message for a in actions if isinstance(a, Outgoing)] == ["abc", b"\x00" * 200]
    assert conn.buffered_amount == 209  # handed to the adapter, not yet to the server
    session.delivered(actions[:1])
    assert conn.buffered_amount == 204
    session.delivered(actions[1:])
    assert conn.buffered_amount == 0


def test_messages_before_the_decision_or_after_the_end_are_ignored() -> None:
    channel = Undecided()
    router = Router()
    router.add("/c", channel)
    session = Counted(router).session
    session.receive("early", 0.0)
    channel.deferred.accept()
    assert session.actions(0.0) == [Accept(None)]
    session.disconnected(1000, "done")
    session.receive("late", 1.0)
    assert channel.messages == [] and channel.closed == [(1000, "done")]


def test_the_adapter_is_woken_once_until_it_takes_the_actions() -> None:
    router = Router()
    router.add("/c", Recorder())
    wrapped = Counted(router)
    session = wrapped.session
    assert wrapped.wakeups == 1  # the accept is waiting
    session.actions(0.0)
    conn = session.connection
    assert conn is not None
    conn.send("a")
    conn.send("b")
    assert wrapped.wakeups == 2
    assert len(session.actions(0.0)) == 2
    conn.send("c")
    assert wrapped.wakeups == 3


def test_a_disconnect_while_open_reaches_on_close_with_the_servers_code() -> None:
    channel = Recorder()
    router, session = open_session(channel)
    session.disconnected(1006)
    assert session.done and channel.closed == [(1006, "")]
    assert router.upgraded == frozenset()


class Flood(Recorder):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        for _ in range(3):
            conn.send(b"x" * 40)  # 42 bytes each on the wire


def test_overflow_drops_what_is_queued_and_closes_1008() -> None:
    channel = Flood(max_buffered_amount=100)
    _, session = open_session(channel)
    session.receive("go", 0.0)
    assert session.actions(0.0) == [CloseRequest(1008, "slow consumer")]
    assert session.buffered_amount == 0


def test_overflow_drop_keeps_the_connection() -> None:
    channel = Flood(max_buffered_amount=100, overflow="drop")
    _, session = open_session(channel)
    session.receive("go", 0.0)
    actions = session.actions(0.0)
    assert [a.size for a in actions if isinstance(a, Outgoing)] == [42, 42]
    assert session.connection is not None and session.connection.dropped == 1
    assert session.state is ConnectionState.OPEN


class Rooms(Recorder):
    subprotocols = ("chat", "superchat")


def test_a_session_routes_with_the_query_and_path_params_and_negotiates() -> None:
    channel = Rooms()
    router = Router()
    router.add("/rooms/{room}", channel)
    headers = [("Sec-WebSocket-Protocol", "superchat, chat")]
    request = Request.parse("GET", "/rooms/7?token=t", headers)
    session = Messages(router, request, 0.0, lambda: None)
    assert session.actions(0.0) == [Accept("chat")]
    (conn,) = channel.connected
    assert conn.request.path_params == {"room": "7"}
    assert conn.request.query.get("token") == "t"
    assert conn.subprotocol == "chat"


class RaisesOnConnect(Recorder):
    def on_connect(self, conn: Connection) -> None:
        raise RuntimeError("secret")


class DefersThenRaisesOnConnect(Undecided, RaisesOnConnect):
    pass


@pytest.mark.parametrize("channel_class", [RaisesOnConnect, DefersThenRaisesOnConnect])
def test_on_connect_raising_closes_1011_then_close_timeout(
    channel_class: type[RaisesOnConnect],
) -> None:
    channel = channel_class(close_timeout=3.0)
    router = Router()
    router.add("/c", channel)
    session = Counted(router, now=5.0).session
    if isinstance(channel, Undecided):
        channel.deferred.accept()
    assert session.actions(5.0) == [Accept(None), CloseRequest(1011, "internal error")]
    assert session.next_deadline() == 8.0


class AsyncAuthenticate(Recorder):
    async def authenticate(self, request: Request) -> object:
        return request.query.get("user")


def test_an_async_authenticate_runs_where_the_adapter_spawns_it() -> None:
    router = Router()
    router.add("/c", AsyncAuthenticate())
    spawned: list[Coroutine[object, None, None]] = []
    request = Request.parse("GET", "/c?user=ada", [])
    session = Messages(router, request, 0.0, lambda: None, spawn=spawned.append)
    assert session.actions(0.0) == []  # waiting for the hook
    (hook,) = spawned
    asyncio.run(hook)
    assert session.actions(0.0) == [Accept(None)]
    assert session.connection is not None and session.connection.user == "ada"


def test_output_may_fill_max_buffered_amount_exactly() -> None:
    channel = Flood(max_buffered_amount=2 * 42, overflow="drop")
    _, session = open_session(channel)
    session.receive("go", 0.0)
    actions = session.actions(0.0)
    assert [a.size for a in actions if isinstance(a, Outgoing)] == [42, 42]
    assert session.connection is not None and session.connection.dropped == 1


class RemembersWhoLeft(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.left: list[Connection] = []

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.left.append(conn)


def test_on_close_gets_the_connection_that_ended() -> None:
    channel = RemembersWhoLeft()
    _, session = open_session(channel)
    conn = session.connection
    assert conn is not None
    session.disconnected(1000)
    assert channel.left == [conn]


HERE = ("203.0.113.7", 52311)


def connection_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spoc_sockets.connections"]


class Principal(Echo):
    """Accepts every handshake as ``user``."""

    def __init__(self, user: object) -> None:
        super().__init__()
        self.user = user

    def authenticate(self, request: Request) -> object:
        return self.user


def test_a_connection_logs_and_counts_its_path_peer_user_code_duration_and_traffic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    router.add("/c", Principal("ada"))
    with caplog.at_level(logging.INFO, "spoc_sockets.connections"):
        session = Messages(router, Request.parse("GET", "/c?token=t", [], HERE), 10.0)
        session.actions(10.0)
        conn = session.connection
        assert conn is not None
        assert repr(session.session) == "<Session 203.0.113.7:52311 open>"
        session.receive("hello", 11.0)
        session.receive(b"\x00\x01", 11.5)
        session.actions(11.5)  # the echoes go out
        session.receive("xyz", 12.25)  # its echo is never taken: the peer leaves
        session.disconnected(1001, "gone")
    assert connection_lines(caplog) == [
        f"open /c peer=203.0.113.7:52311 user=ada conn={conn.id}",
        f"closed /c peer=203.0.113.7:52311 user=ada conn={conn.id} code=1001"
        " duration=2.250s in=3/10B out=2/7B",
    ]
    assert len(caplog.records) == 2  # and nothing from the hooks, which all returned
    stats = router.stats()["/c"]
    assert (stats.accepted, stats.connections, stats.closed) == (1, 0, {1001: 1})
    assert (stats.messages_in, stats.bytes_in, stats.messages_out, stats.bytes_out) == (3, 10, 2, 7)


class Anonymous:
    id = None
    name = None


class Named:
    def __init__(self, name: object) -> None:
        self.name = name


class Identified(Named):
    def __init__(self, id: object, name: object = None) -> None:
        super().__init__(name)
        self.id = id


@pytest.mark.parametrize(
    ("user", "shown"),
    [
        (None, "-"),
        ("ada", "ada"),
        (42, "42"),
        ("x" * 100, "x" * 64),
        (True, "bool"),
        (Identified(7, "not shown"), "7"),
        (Identified("i" * 100), "i" * 64),
        (Identified(True, "bea"), "bea"),
        (Named("cy"), "cy"),
        (Named(False), "Named"),
        (Anonymous(), "Anonymous"),
        ({"id": "ada", "password": "SECRET"}, "ada"),
        ({"id": "d" * 100}, "d" * 64),
        ({"id": False, "name": "bea"}, "bea"),
        ({"name": 5}, "5"),
        ({"password": "SECRET"}, "dict"),
    ],
)
def test_the_log_shows_the_principal_as_itself_its_id_or_name_or_its_type(
    user: object, shown: str, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router()
    router.add("/c", Principal(user))
    with caplog.at_level(logging.INFO, "spoc_sockets.connections"):
        session = Messages(router, Request.parse("GET", "/c", [], HERE), 0.0)
        session.actions(0.0)
        session.disconnected(1000)
    opened, closed = connection_lines(caplog)
    assert opened.split()[3] == f"user={shown}"
    assert closed.split()[3] == f"user={shown}"


class Refuses(Recorder):
    def authenticate(self, request: Request) -> object:
        raise Reject(401, "no")


def test_a_refusal_logs_the_path_peer_and_status_and_counts_on_its_route(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    router.add("/c", Refuses())
    deferring = Undecided()
    router.add("/rooms/{room}", deferring)
    with caplog.at_level(logging.INFO, "spoc_sockets.connections"):
        unknown = Messages(router, Request.parse("GET", "/nowhere", []), 0.0)
        refused = Messages(router, Request.parse("GET", "/c?token=t", [], HERE), 0.0)
        later = Messages(router, Request.parse("GET", "/rooms/7", [], HERE), 0.0)
        deferring.deferred.reject(403, "not yours")
        later.actions(1.0)
    assert unknown.done and refused.done and later.done
    assert connection_lines(caplog) == [
        "refused - peer=- status=404",
        "refused /c peer=203.0.113.7:52311 status=401",
        "refused /rooms/7 peer=203.0.113.7:52311 status=403",
    ]
    stats = router.stats()
    assert stats["/c"].refused == {401: 1}
    assert stats["/rooms/{room}"].refused == {403: 1}
    assert stats.unrouted_refused == {404: 1}


def test_a_protocol_error_without_a_status_is_refused_400() -> None:
    router = Router()
    router.add("/c", Undecided())
    session = Messages(router, Request.parse("GET", "/c", []), 0.0)
    session.refuse_for(ProtocolError("the request is wrong"))
    assert session.actions(0.0) == [Refuse(400, (), b"the request is wrong\n")]
    assert session.done


@pytest.mark.parametrize("no_internal_errors_in_the_core", [None])  # one is made here
def test_an_internal_error_is_logged_with_the_connection_it_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = Recorder()
    _, session = open_session(channel)
    conn = session.connection
    assert conn is not None

    def broken(item: Outgoing, now: float) -> None:
        raise RuntimeError("core bug")

    monkeypatch.setattr(session.queue, "send_message", broken)
    conn.send("x")
    with caplog.at_level(logging.ERROR, "spoc_sockets.core"):
        assert session.actions(1.0) == []  # no close to send: the transport is dropped
    (record,) = [r for r in caplog.records if r.name == "spoc_sockets.core"]
    assert record.getMessage() == f"internal error in the core; dropping {session.queue!r}"
    assert session.done and channel.closed == [(1011, "internal error")]


class AsyncEcho(Recorder):
    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def test_the_idle_clock_restarts_when_an_async_hook_ends() -> None:
    channel = AsyncEcho(idle_timeout=10.0, close_timeout=1.0)
    router = Router()
    router.add("/c", channel)
    spawned: list[Coroutine[object, None, None]] = []
    session = Messages(router, Request.parse("GET", "/c", []), 0.0, spawn=spawned.append)
    assert session.actions(0.0) == [Accept(None)]
    assert session.next_deadline() == 10.0
    session.receive("slow", 2.0)
    (hook,) = spawned
    assert session.input_paused
    asyncio.run(hook)
    actions = session.actions(6.0)  # the hook ended: input flows again
    assert [a.message for a in actions if isinstance(a, Outgoing)] == ["slow"]
    assert not session.input_paused
    assert session.next_deadline() == 16.0
    session.handle_timeout(15.9)
    assert session.state is ConnectionState.OPEN
    session.handle_timeout(16.0)
    assert session.actions(16.0) == [CloseRequest(1001, "idle timeout")]


class Breaks(Recorder):
    def authenticate(self, request: Request) -> object:
        raise RuntimeError("secret detail")


def test_a_handshake_that_raises_is_500_and_logged_with_its_path_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    router.add("/rooms/{room}", Breaks())
    with caplog.at_level(logging.ERROR, "spoc_sockets.hooks"):
        session = Messages(router, Request.parse("GET", "/rooms/7?token=t", []), 0.0)
    assert session.actions(0.0) == [Refuse(500, (), b"internal server error\n")]
    (record,) = [r for r in caplog.records if r.name == "spoc_sockets.hooks"]
    assert record.getMessage() == "handshake of /rooms/7 failed"
    assert record.exc_info is not None and "secret detail" in str(record.exc_info[1])


def test_each_message_the_drop_policy_drops_is_counted() -> None:
    channel = Flood(max_buffered_amount=42, overflow="drop")
    router, session = open_session(channel)
    session.receive("go", 0.0)
    actions = session.actions(0.0)
    assert [a.size for a in actions if isinstance(a, Outgoing)] == [42]
    assert session.connection is not None and session.connection.dropped == 2
    session.disconnected(1000)
    assert router.stats()["/c"].dropped == 2


def test_nothing_more_is_queued_once_an_overflow_closes_the_connection() -> None:
    channel = Recorder(max_buffered_amount=100)
    _, session = open_session(channel)
    conn = session.connection
    assert conn is not None
    conn.send(b"x" * 60)  # 62 bytes on the wire
    conn.send(b"x" * 60)  # past 100: the connection closes, 1008
    conn.send(b"x" * 10)  # would fit, but the connection is closing
    assert conn.buffered_amount == 62
    assert session.actions(0.0) == [CloseRequest(1008, "slow consumer")]
    assert conn.buffered_amount == 0


class RaisesOnClose(Recorder):
    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        raise RuntimeError("secret")


def test_an_on_close_that_raises_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    _, session = open_session(RaisesOnClose())
    with caplog.at_level(logging.ERROR, "spoc_sockets.hooks"):
        session.disconnected(1000)
    (record,) = caplog.records
    assert record.name == "spoc_sockets.hooks" and record.exc_info is not None
    assert session.done


class AsyncOnClose(Recorder):
    async def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append((code, reason))


def test_an_async_on_close_runs_where_the_adapter_spawns_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = AsyncOnClose()
    router = Router()
    router.add("/c", channel)
    spawned: list[Coroutine[object, None, None]] = []
    session = Messages(router, Request.parse("GET", "/c", []), 0.0, spawn=spawned.append)
    assert session.actions(0.0) == [Accept(None)]
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        session.disconnected(1001, "gone")
        assert session.done and channel.closed == []  # not yet run: the adapter runs it
        (hook,) = spawned
        asyncio.run(hook)
    assert channel.closed == [(1001, "gone")]
    assert caplog.records == []


def test_the_idle_clock_starts_when_the_connection_opens() -> None:
    router = Router()
    router.add("/c", Recorder(idle_timeout=10.0))
    session = Messages(router, Request.parse("GET", "/c", []), 0.0)
    assert session.actions(4.0) == [Accept(None)]  # the adapter's first turn comes later
    assert session.next_deadline() == 10.0
    session.handle_timeout(10.0)
    assert session.actions(10.0) == [CloseRequest(1001, "idle timeout")]


class SendsOnClose(Recorder):
    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        conn.send("too late")


def test_a_message_sent_from_on_close_is_discarded() -> None:
    channel = SendsOnClose()
    _, session = open_session(channel)
    conn = session.connection
    assert conn is not None
    session.disconnected(1000)
    assert conn.buffered_amount == 0
    assert session.actions(1.0) == []
