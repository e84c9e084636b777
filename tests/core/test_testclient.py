"""TestClient's own promises: the state a WebSocket reports, abort, and what it raises."""

from __future__ import annotations

import pytest

from spoc_sockets import Request
from spoc_sockets.testing import ConnectionClosed, NothingReceived, TestClient

from .wire import Recorder, router_with


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
