"""What a refused peer and a misusing caller read: the bodies of refusals, the answers of
plain HTTP routes (``Router.answer_http``, which the ASGI adapter relies on), and the
messages of ``Reject`` and ``UsageError``, exactly."""

from __future__ import annotations

import logging
import pickle

import pytest

from spoc_sockets import Connection, Deferred, Hub, Reject, Request, Response, Router, UsageError
from spoc_sockets.request import Headers
from spoc_sockets.testing import ConnectionClosed, HandshakeRejected, TestClient

from ..frames import upgrade_request
from .wire import Peer, Recorder, frame, router_with


def plain_request(target: str, method: str = "GET", upgrade: bool = False) -> Request:
    headers = [("Host", "example")]
    if upgrade:
        headers += [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "MDEyMzQ1Njc4OWFiY2RlZg=="),
            ("Sec-WebSocket-Version", "13"),
        ]
    return Request.parse(method, target, headers)


# -- refusal bodies ----------------------------------------------------------------------------


NO_UPGRADE_TOKEN = "Upgrade: websocket\r\nConnection: keep-alive\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status", "body", "line"),
    [
        (upgrade_request("/nowhere"), 404, b"no channel at /nowhere\n", None),
        (
            upgrade_request("/echo", method="POST"),
            405,
            b"a WebSocket handshake must use GET, not POST\n",
            b"Allow: GET",
        ),
        (
            upgrade_request("/echo", upgrade=""),
            426,
            b"this path serves WebSocket connections only (Upgrade: websocket expected)\n",
            b"Upgrade: websocket",
        ),
        (
            upgrade_request("/echo", version="8"),
            426,
            b"unsupported Sec-WebSocket-Version 8; 13 expected\n",
            b"Sec-WebSocket-Version: 13",
        ),
        (
            upgrade_request("/echo", http="1.0"),
            400,
            b"a WebSocket handshake needs HTTP/1.1, not 1.0\n",
            None,
        ),
        (
            upgrade_request("/echo", upgrade="", extra=NO_UPGRADE_TOKEN),
            400,
            b"the Connection header must contain 'upgrade'\n",
            None,
        ),
        (
            upgrade_request("/echo", version=""),
            426,
            b"unsupported Sec-WebSocket-Version (missing); 13 expected\n",
            None,
        ),
        (
            upgrade_request("/echo", version="8", extra="Sec-WebSocket-Version: 13\r\n"),
            426,
            b"unsupported Sec-WebSocket-Version 8, 13; 13 expected\n",
            None,
        ),
        (
            upgrade_request("/echo", extra="Content-Length: 2\r\n") + b"hi",
            400,
            b"a WebSocket handshake request has no body\n",
            None,
        ),
        (upgrade_request("/echo", key="short"), 400, b"Sec-WebSocket-Key must be one base64", None),
    ],
)
def test_a_refusal_says_what_the_peer_did_wrong(
    request_bytes: bytes, status: int, body: bytes, line: bytes | None
) -> None:
    peer = Peer(router_with())
    peer.send(request_bytes)
    assert peer.answer.status == status
    head = bytes(peer.out).partition(b"\r\n\r\n")[0].split(b"\r\n")
    for expected in (line, b"Content-Type: text/plain; charset=utf-8", b"Connection: close"):
        if expected is not None:  # in its canonical case
            assert expected in head
    assert f"Content-Length: {len(peer.answer.body)}".encode() in head
    assert peer.answer.body.startswith(body) and peer.answer.body.endswith(b"\n")
    assert peer.answer.header("Content-Length") == str(len(peer.answer.body))


# -- plain HTTP routes -------------------------------------------------------------------------


def test_an_http_route_answers_with_what_its_handler_returns() -> None:
    router = router_with()
    router.add_http("/hello", lambda request: Response(200, f"hi {request.query.get('who')}"))
    answer = router.answer_http(plain_request("/hello?who=ada"))
    assert answer == Response(200, "hi ada")
    peer = Peer(router)
    peer.send(b"GET /hello?who=bob HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (peer.answer.status, peer.answer.body) == (200, b"hi bob")
    assert peer.answer.header("Connection") == "close"


def test_an_http_route_that_raises_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    router = Router()

    def broken(request: Request) -> Response:
        raise RuntimeError("secret")

    router.add_http("/broken", broken)
    with caplog.at_level(logging.ERROR, "spoc_sockets"):
        answer = router.answer_http(plain_request("/broken"))
    assert answer == Response(500, "internal server error\n")
    (record,) = caplog.records
    assert record.getMessage() == "HTTP route /broken failed"
    assert record.exc_info is not None and "secret" in str(record.exc_info[1])


@pytest.mark.parametrize(
    ("method", "target", "status", "header"),
    [
        ("POST", "/echo", 405, ("Allow", "GET")),
        ("GET", "/echo", 426, ("Upgrade", "websocket")),
        ("GET", "/echo?a=1", 426, ("Upgrade", "websocket")),
    ],
)
def test_a_channels_path_without_an_upgrade_is_refused(
    method: str, target: str, status: int, header: tuple[str, str]
) -> None:
    answer = router_with().answer_http(plain_request(target, method))
    assert answer is not None
    assert (answer.status, answer.headers) == (status, (header,))
    assert isinstance(answer.body, str) and answer.body.endswith("\n") and len(answer.body) > 20


def test_answer_http_leaves_upgrades_and_unknown_paths_to_the_caller() -> None:
    router = router_with()
    assert router.answer_http(plain_request("/echo", upgrade=True)) is None
    assert router.answer_http(plain_request("/nowhere")) is None
    assert router.answer_http(plain_request("/nowhere?echo")) is None


# -- Reject ------------------------------------------------------------------------------------


def test_reject_defaults_to_403_with_no_body() -> None:
    reject = Reject()
    assert (reject.status, reject.body, reject.headers) == (403, b"", ())


@pytest.mark.parametrize("status", [400, 499, 599])
def test_reject_takes_any_4xx_or_5xx(status: int) -> None:
    assert Reject(status).status == status


@pytest.mark.parametrize("status", [101, 200, 399, 600])
def test_reject_refuses_other_statuses(status: int) -> None:
    with pytest.raises(UsageError, match=f"^Reject needs a 4xx or 5xx status, not {status}$"):
        Reject(status)


def test_a_reject_survives_pickling() -> None:
    """A decision made in another process (a process pool) comes back intact."""
    reject = pickle.loads(pickle.dumps(Reject(401, "token required")))
    assert (reject.status, reject.body) == (401, b"token required")


# -- what a misusing caller reads ---------------------------------------------------------------


def test_a_second_http_route_at_a_path_is_refused_by_name() -> None:
    router = Router()
    router.add_http("/page", lambda request: Response())
    with pytest.raises(UsageError, match=r"^an HTTP route is already registered at '/page'$"):
        router.add_http("/page", lambda request: Response())


def test_opening_a_transport_twice_is_refused_by_name() -> None:
    hub = Hub(router_with("/r", Recorder()))
    first = hub.open(0.0, transport="socket-1")
    with pytest.raises(UsageError, match=r"^transport 'socket-1' already has a connection"):
        hub.open(0.0, transport="socket-1")
    first.transport_lost(0.0)
    first.transport_lost(0.0)  # reporting it twice is harmless
    second = hub.open(0.0, transport="socket-1")
    assert hub.connections == [second]


def test_headers_repr_shows_the_items() -> None:
    headers = Headers([("Host", "example"), ("X-A", "1")])
    assert repr(headers) == "Headers([('Host', 'example'), ('X-A', '1')])"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("echo", "a path starts with '/': 'echo'"),
        ("/rooms/{room}/{room}", "bad or repeated parameter '{room}' in '/rooms/{room}/{room}'"),
        ("/rooms/{1st}", "bad or repeated parameter '{1st}' in '/rooms/{1st}'"),
        ("/rooms/x{room}", "a parameter is a whole segment, like /{name}: '/rooms/x{room}'"),
        ("/echo", "a channel is already registered at '/echo'"),
        ("/{anything}", "'/{anything}' conflicts with the channel at '/{name}'"),
    ],
)
def test_a_path_that_cannot_be_served_is_refused_by_name(path: str, message: str) -> None:
    router = router_with("/echo")
    router.add("/{name}", Recorder())
    with pytest.raises(UsageError) as refused:
        router.add(path, Recorder())
    assert str(refused.value) == message


def test_router_add_names_what_it_got_instead_of_a_channel() -> None:
    with pytest.raises(UsageError) as refused:
        Router().add("/x", Recorder)  # type: ignore[type-var]
    assert str(refused.value).startswith("router.add takes a ChannelServer instance, not <class")


def test_http_handler_gives_the_registered_handler() -> None:
    router = Router()

    def page(request: Request) -> Response:
        return Response()

    router.add_http("/page", page)
    assert router.http_handler("/page") is page
    assert router.http_handler("/other") is None


# -- close codes a server may send ----------------------------------------------------------------

SENDABLE = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 3000, 4999]
NOT_SENDABLE = [999, 1004, 1005, 1006, 1010, 1014, 1015, 2999, 5000]


@pytest.mark.parametrize("code", SENDABLE)
def test_a_sendable_close_code_is_sent(code: int) -> None:
    peer = Peer(router_with("/r", Recorder()))
    conn = peer.handshake("/r")
    conn.close(code, "é" * 61 + "a")  # 123 bytes of UTF-8: the most a reason may take
    peer.flush()
    assert peer.close == (code, "é" * 61 + "a")


@pytest.mark.parametrize("code", NOT_SENDABLE)
def test_an_unsendable_close_code_is_refused_by_name(code: int) -> None:
    peer = Peer(router_with("/r", Recorder()))
    conn = peer.handshake("/r")
    with pytest.raises(UsageError) as refused:
        conn.close(code)
    assert str(refused.value) == f"close code {code} may not be sent (RFC 6455 section 7.4)"


def test_a_close_reason_past_123_bytes_is_refused_by_name() -> None:
    peer = Peer(router_with("/r", Recorder()))
    conn = peer.handshake("/r")
    with pytest.raises(UsageError) as refused:
        conn.close(1000, "é" * 62)
    assert str(refused.value) == "a close reason is at most 123 bytes of UTF-8"


def test_a_second_decision_is_refused_by_name() -> None:
    deferred = Deferred()
    deferred.accept()
    with pytest.raises(UsageError) as refused:
        deferred.reject()
    assert str(refused.value) == "this handshake was already decided"


def test_send_json_keeps_non_ascii_text_as_is() -> None:
    class Replies(Recorder):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            conn.send_json({"é": [1, "ü"]})

    peer = Peer(router_with("/r", Replies()))
    peer.handshake("/r")
    peer.send(frame(0x1, b"go"))
    assert peer.frames[-1].payload == '{"é":[1,"ü"]}'.encode()


# -- what TestClient raises -----------------------------------------------------------------------


class Guarded(Recorder):
    def authenticate(self, request: Request) -> object:
        raise Reject(401, "token required", [("WWW-Authenticate", "Bearer")])


def test_handshake_rejected_carries_the_answer() -> None:
    with (
        TestClient(router_with("/g", Guarded())) as client,
        pytest.raises(HandshakeRejected) as rejected,
    ):
        client.connect("/g")
    assert str(rejected.value) == "handshake rejected with 401: b'token required'"
    assert ("www-authenticate", "Bearer") in rejected.value.headers  # names lower-cased
    assert rejected.value.body == b"token required"


def test_connection_closed_names_the_code_and_reason() -> None:
    with TestClient(router_with("/r", Recorder())) as client, client.connect("/r") as ws:
        ws.server.connection.close(4000, "bye")  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive()
    assert str(closed.value) == "connection closed with 4000 'bye'"
    assert (closed.value.code, closed.value.reason) == (4000, "bye")


def test_a_message_of_another_type_is_refused_by_name() -> None:
    peer = Peer(router_with("/r", Recorder()))
    conn = peer.handshake("/r")
    with pytest.raises(UsageError) as refused:
        conn.send(123)  # type: ignore[arg-type]
    assert str(refused.value) == "a message is str or bytes, not int"


def test_broadcast_to_some_reaches_only_them() -> None:
    channel = Recorder()
    router = router_with("/r", channel)
    peers = [Peer(router) for _ in range(3)]
    conns = [peer.handshake("/r") for peer in peers]
    channel.broadcast("to two", to=conns[:2])
    for peer in peers:
        peer.flush()
    assert [[f.payload for f in peer.frames] for peer in peers] == [[b"to two"], [b"to two"], []]
