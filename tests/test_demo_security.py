"""The demo as a real platform would be: users by signed token from its own page's
route, never by a name the client claims; browsers from its own origin only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from spoc_sockets import Router
from spoc_sockets.demo.app import TokenIssuer, demo_router
from spoc_sockets.request import Request
from spoc_sockets.testing import HandshakeRejected, TestClient

from .behaviour.harness_asyncio import start
from .behaviour.harness_net import LEGACY

TIMEOUT = 20.0
SAME_ORIGIN = (("Origin", "http://testserver"),)  # TestClient's Host is "testserver"


def issue(router: Router, name: str) -> tuple[int, dict[str, str] | str]:
    handler = router.http_handler("/token")
    assert handler is not None
    answer = handler(Request.parse("GET", f"/token?name={name}", [("host", "testserver")]))
    body = answer.body.decode() if isinstance(answer.body, bytes) else answer.body
    return answer.status, json.loads(body) if answer.status == 200 else body


def test_the_server_names_the_user_and_the_chat_trusts_only_the_token() -> None:
    router = demo_router()
    status, issued = issue(router, "ada")
    assert status == 200 and isinstance(issued, dict)
    assert issued["user"].startswith("ada-") and issued["user"] != "ada"
    with TestClient(router) as client:
        ws = client.connect(f"/chat?token={issued['token']}", headers=SAME_ORIGIN)
        assert ws.receive_json() == {"type": "welcome", "user": issued["user"]}
        claimed = client.connect("/chat?user=ada", headers=SAME_ORIGIN)
        assert claimed.receive_json()["user"].startswith("guest-")  # ?user= means nothing
    assert issue(router, "ada")[1]["user"] != issued["user"]  # type: ignore[index]


@pytest.mark.parametrize(
    "name", ["", "x" * 33, "guest-1", "a b", "<script>", "guest", "Guest-1", "GUEST", "%D0%B0da"]
)
def test_the_token_route_refuses_bad_names(name: str) -> None:
    assert issue(demo_router(), name.replace(" ", "%20"))[0] == 400


def test_forged_and_expired_tokens_are_refused() -> None:
    router = demo_router()
    _, issued = issue(router, "ada")
    assert isinstance(issued, dict)
    other = TokenIssuer()  # another process's secret
    _, foreign = other.issue("ada")
    body, _, mac = issued["token"].partition(".")
    tampered = "eA" + body  # another user id (or expiry) under the same signature
    with TestClient(router) as client:
        for token in (foreign, f"{tampered}.{mac}", "nonsense", "a.b", "." * 500):
            with pytest.raises(HandshakeRejected) as refused:
                client.connect(f"/chat?token={token}", headers=SAME_ORIGIN)
            assert refused.value.status == 401
    clock = [1000.0]
    issuer = TokenIssuer(lifetime=60.0, clock=lambda: clock[0])
    _, token = issuer.issue("ada")
    assert issuer.verify(token) is not None
    clock[0] += 60.0
    assert issuer.verify(token) is None


@pytest.mark.parametrize("path", ["/chat", "/stream/demo", "/stream/demo?role=publish"])
def test_other_origins_are_refused(path: str) -> None:
    router = demo_router()
    with TestClient(router) as client:
        for origin in ("http://evil.example", "http://testserver.evil.example", "null"):
            with pytest.raises(HandshakeRejected) as refused:
                client.connect(path, headers=(("Origin", origin),))
            assert refused.value.status == 403
        client.connect(path, headers=SAME_ORIGIN).close()


def test_non_browser_clients_send_no_origin_and_pass() -> None:
    with TestClient(demo_router()) as client:
        assert client.connect("/chat").receive_json()["user"].startswith("guest-")


def test_the_token_route_answers_get_only() -> None:
    handler = demo_router().http_handler("/token")
    assert handler is not None
    assert handler(Request.parse("POST", "/token?name=ada", [("host", "h")])).status == 405


def test_the_demo_page_flow_over_a_real_socket() -> None:
    """What the page does, over the asyncio adapter: GET /token, then /chat?token=...
    with the page's Origin; a page from another site is refused with 403."""
    with start(demo_router()) as server:
        base = f"127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"http://{base}/token?name=ada", timeout=TIMEOUT) as answer:
            issued = json.loads(answer.read())
            assert answer.headers["Cache-Control"] == "no-store"
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"http://{base}/token?name=guest-1", timeout=TIMEOUT)
        assert bad.value.code == 400
        url = f"ws://{base}/chat?token={issued['token']}"
        with connect(url, origin=f"http://{base}", open_timeout=TIMEOUT, **LEGACY) as ws:  # type: ignore[arg-type]
            assert json.loads(ws.recv(timeout=TIMEOUT))["user"] == issued["user"]
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin="http://evil.example", open_timeout=TIMEOUT, **LEGACY)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
