"""What operators see: counters per channel, one log line per connection, metrics."""

from __future__ import annotations

import logging
import threading
import urllib.request

import pytest
from websockets.sync.client import connect

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router
from spoc_sockets.metrics import add_metrics
from spoc_sockets.testing import HandshakeRejected, TestClient
from spoc_sockets.threads import serve

from .behaviour.harness_net import LEGACY


class Echo(ChannelServer):
    origins = ("https://app.example", None)

    def authenticate(self, request: Request) -> object:
        if request.query.get("token") == "SECRET-TOKEN-1":
            return {"id": "ada", "password": "SECRET-PASSWORD"}
        raise Reject(401, "bad token")

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def make_router() -> Router:
    router = Router()
    router.add("/echo", Echo())
    router.add("/stream/{id}", Echo())
    return router


def test_stats_count_per_channel() -> None:
    router = make_router()
    with TestClient(router) as client:
        first = client.connect("/echo?token=SECRET-TOKEN-1")
        second = client.connect("/stream/7?token=SECRET-TOKEN-1")
        for message in ("a", "bb", b"ccc"):
            first.send(message)
            assert first.receive() == message
        with pytest.raises(HandshakeRejected):
            client.connect("/echo?token=wrong")
        with pytest.raises(HandshakeRejected):
            client.connect("/echo", headers=[("Origin", "https://evil.example")])
        with pytest.raises(HandshakeRejected):
            client.connect("/nowhere")
        stats = router.stats()
        echo = stats["/echo"]
        assert (echo.connections, echo.accepted, echo.refused) == (1, 1, {401: 1, 403: 1})
        assert (echo.messages_in, echo.bytes_in, echo.messages_out, echo.bytes_out) == (3, 6, 3, 6)
        assert stats["/stream/{id}"].connections == 1
        assert stats.unrouted_refused == {404: 1}
        first.close(4000)
        second.close()
        stats = router.stats()
        assert stats["/echo"].closed == {4000: 1} and stats["/echo"].connections == 0
        assert stats["/echo"].messages_in == 3  # kept after the connection ended
        assert stats["/stream/{id}"].closed == {1000: 1}


def test_a_line_per_connection_and_refusal_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    router = make_router()
    secrets = ("SECRET-TOKEN-1", "SECRET-COOKIE-2", "SECRET-AUTH-3", "SECRET-PASSWORD")
    headers = [("Cookie", "session=SECRET-COOKIE-2"), ("Authorization", "Bearer SECRET-AUTH-3")]
    with caplog.at_level(logging.DEBUG, logger="spoc_sockets"), TestClient(router) as client:
        ws = client.connect("/echo?token=SECRET-TOKEN-1", headers=headers)
        ws.send("hello")
        ws.receive()
        client.advance(2.5)
        ws.close(4001)
        with pytest.raises(HandshakeRejected):
            client.connect("/echo?token=SECRET-TOKEN-1x", headers=headers)
    lines = [r.getMessage() for r in caplog.records if r.name == "spoc_sockets.connections"]
    assert lines[0].startswith("open /echo peer=127.0.0.1:50000 user=ada conn=")
    assert lines[1].startswith("closed /echo peer=127.0.0.1:50000 user=ada conn=")
    assert "code=4001 duration=2.500s in=1/5B out=1/5B" in lines[1]
    assert lines[2] == "refused /echo peer=127.0.0.1:50000 status=401"
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.endswith("connections"))
    for secret in secrets:
        assert secret not in caplog.text


def test_prometheus_metrics_and_health_on_the_servers_own_port() -> None:
    router = make_router()
    add_metrics(router)
    with serve(router, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"127.0.0.1:{server.port}"
        with connect(f"ws://{base}/echo?token=SECRET-TOKEN-1", open_timeout=10, **LEGACY) as ws:
            for _ in range(3):
                ws.send("hi")
                ws.recv(timeout=10)
            with urllib.request.urlopen(f"http://{base}/metrics", timeout=10) as answer:
                assert answer.headers["Content-Type"].startswith("text/plain")
                text = answer.read().decode()
        with urllib.request.urlopen(f"http://{base}/healthz", timeout=10) as answer:
            assert answer.status == 200 and answer.read() == b"ok\n"
    assert 'spoc_connections{channel="/echo"} 1.0' in text
    assert 'spoc_messages_received_total{channel="/echo"} 3.0' in text
    assert 'spoc_sent_bytes_total{channel="/echo"} 6.0' in text
    assert 'spoc_handshakes_accepted_total{channel="/stream/{id}"} 0.0' in text
