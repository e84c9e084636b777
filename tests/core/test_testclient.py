"""TestClient's own promises: the state a WebSocket reports, abort, and what it raises."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from spoc_sockets import ChannelServer, Connection, Deferred, Hub, Reject, Request, testing
from spoc_sockets.testing import ConnectionClosed, HandshakeRejected, NothingReceived, TestClient

from .wire import Echo, Recorder, router_with


def test_a_fresh_connection_reports_its_state() -> None:
    with TestClient(router_with("/r", Recorder())) as client, client.connect("/r") as ws:
        assert ws.open is True
        assert ws.subprotocol is None
        assert (ws.close_code, ws.close_reason, ws.pings) == (None, None, 0)
        with pytest.raises(NothingReceived) as nothing:
            ws.receive()
        assert str(nothing.value) == "no message is waiting on this connection"


def test_a_close_without_reason_is_reported_with_an_empty_one() -> None:
    with TestClient(router_with("/r", Recorder())) as client, client.connect("/r") as ws:
        assert ws.server.connection is not None
        ws.server.connection.close()
        client.pump()
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
        assert (closed.value.code, closed.value.reason) == (1000, "")
        assert (ws.close_code, ws.close_reason) == (1000, "")


def test_abort_drops_the_transport_and_the_server_sees_1006() -> None:
    recorder = Recorder()
    router = router_with("/r", recorder)
    with TestClient(router) as client:
        ws = client.connect("/r")
        ws.abort()
        assert ws.close_code == 1006
        assert ws.server.should_close
        assert recorder.closed == [(1006, "")]
        ws.abort()  # a second time: nothing more happens
        assert recorder.closed == [(1006, "")] and router.upgraded == frozenset()


def test_abort_after_a_close_keeps_the_close_code() -> None:
    recorder = Recorder()
    with TestClient(router_with("/r", recorder)) as client:
        ws = client.connect("/r")
        assert ws.server.connection is not None
        ws.server.connection.close(4000, "bye")
        client.pump()
        ws.abort()
        assert ws.close_code == 4000


def test_the_client_answers_the_servers_close_at_once() -> None:
    recorder = Recorder(close_timeout=30.0)
    with TestClient(router_with("/r", recorder)) as client, client.connect("/r") as ws:
        assert ws.server.connection is not None
        ws.server.connection.close(4001, "done")
        client.pump()
        assert ws.server.should_close  # no wait for close_timeout
        assert recorder.closed == [(4001, "done")]


class SeesTheRequest(Recorder):
    def authenticate(self, request: Request) -> object:
        return request.headers.get("host")


def test_requests_come_from_testserver_without_compression_unless_asked() -> None:
    router = router_with("/r", SeesTheRequest(compression=True))
    with TestClient(router) as client:
        plain = client.connect("/r")
        assert plain.server.connection is not None
        assert plain.server.connection.user == "testserver"
        assert not plain.server._compressed
        assert client.connect("/r", compression=True).server._compressed


def test_close_without_arguments_is_1000_with_no_reason() -> None:
    recorder = Recorder()
    with TestClient(router_with("/r", recorder)) as client:
        ws = client.connect("/r")
        ws.close()
        assert recorder.closed == [(1000, "")]
        assert ws.close_code == 1000


def test_the_client_serves_its_router_with_the_hubs_default_deadlines() -> None:
    router = router_with("/r", Recorder())
    client = TestClient(router)
    hub = Hub(router)
    assert client.router is router and client.hub.router is router
    assert client.hub.drain_timeout == hub.drain_timeout
    assert client.hub.shutdown_timeout == hub.shutdown_timeout


class Later(Recorder):
    """Decides every handshake later, through the Deferred it keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.deferreds: list[Deferred] = []

    def authenticate(self, request: Request) -> object:
        self.deferreds.append(Deferred())
        return self.deferreds[-1]


def test_a_pending_handshake_is_not_open_and_has_nothing_to_receive() -> None:
    with TestClient(router_with("/r", Later())) as client:
        ws = client.connect("/r", subprotocols=["chat"])
        assert ws.open is False and ws.subprotocol is None
        assert (ws.close_code, ws.close_reason) == (None, None)
        with pytest.raises(NothingReceived):
            ws.receive()


def test_a_client_that_never_reads_its_refusal_is_dropped_without_an_answer() -> None:
    channel = Later()
    with TestClient(router_with("/r", channel), drain_timeout=1.0) as client:
        ws = client.connect("/r")
        ws.pause_reading()
        channel.deferreds[0].reject(403, "no")
        client.pump()
        with pytest.raises(NothingReceived):  # the 403 waits, unread
            ws.receive()
        client.advance(1.0)  # the drain deadline: the server drops the transport
        assert ws.server.should_abort
        with pytest.raises(HandshakeRejected) as dropped:
            ws.receive()
        answer = b"the server closed the connection without an answer"
        assert (dropped.value.status, dropped.value.headers, dropped.value.body) == (0, [], answer)


def test_a_rejection_message_shows_the_status_and_the_first_200_bytes_of_the_body() -> None:
    class Refuses(Recorder):
        def authenticate(self, request: Request) -> object:
            raise Reject(401, "x" * 199 + "yz")

    with (
        TestClient(router_with("/r", Refuses())) as client,
        pytest.raises(HandshakeRejected) as refused,
    ):
        client.connect("/r")
    assert str(refused.value) == f"handshake rejected with 401: {b'x' * 199 + b'y'!r}"
    assert refused.value.body == b"x" * 199 + b"yz"


def test_reading_again_delivers_what_waited_and_what_comes_later() -> None:
    with TestClient(router_with("/r", Echo())) as client, client.connect("/r") as ws:
        ws.pause_reading()
        ws.send("waited")
        assert ws.receive_all() == []
        ws.resume_reading()
        assert ws.receive_all() == ["waited"]
        ws.send("later")
        assert ws.receive_all() == ["later"]


def test_what_a_client_did_not_read_is_lost_when_it_aborts() -> None:
    with TestClient(router_with("/r", Recorder())) as client:
        ws = client.connect("/r")
        ws.pause_reading()
        conn = ws.server.connection
        assert conn is not None
        conn.send("unread")
        conn.close(4000, "bye")
        client.pump()  # the message and the close frame wait in the server
        ws.close()  # crosses the server's close: the server finishes, its last bytes unread
        assert ws.server.should_close and ws.close_code is None
        ws.abort()
        ws.resume_reading()  # the transport is gone: nothing is read any more
        assert ws.receive_all() == []
        assert ws.close_code == 1006


def test_a_connection_that_ended_is_not_kept_by_the_client() -> None:
    with TestClient(router_with("/r", Echo())) as client:
        ws = client.connect("/r")
        ws.close()
        assert ws.close_code == 1000
        gone = weakref.ref(ws)
        del ws
        gc.collect()
        assert gone() is None


class Stalls(ChannelServer):
    """An async on_message that outlasts the hook timeout, and notes its cancellation."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        try:
            await asyncio.sleep(1.0)  # bounded: a regression fails after a second
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_an_async_hook_still_running_after_the_hook_timeout_fails_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(testing, "HOOK_TIMEOUT", 0.01)
    channel = Stalls()
    with TestClient(router_with("/r", channel)) as client:
        ws = client.connect("/r")
        with pytest.raises(RuntimeError) as late:
            ws.send("hello")
        assert str(late.value) == "an async hook was still running after 0.01 s"
        assert channel.cancelled == 1


class AsyncEcho(ChannelServer):
    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        await asyncio.sleep(0)
        conn.send(message)


def test_a_client_runs_async_hooks_again_after_it_exited() -> None:
    client = TestClient(router_with("/r", AsyncEcho()))
    for text in ("first", "second"):
        with client, client.connect("/r") as ws:
            ws.send(text)
            assert ws.receive() == text
