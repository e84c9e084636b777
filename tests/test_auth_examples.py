"""``examples/auth.py``, the code of ``docs/auth.rst``, served on real sockets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from examples.auth import SITE, make_router
from spoc_sockets.threads import serve

from .behaviour.harness_net import LEGACY

TIMEOUT = 10.0
AUTH_TIMEOUT = 0.3


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    with serve(make_router(tmp_path, auth_timeout=AUTH_TIMEOUT), "127.0.0.1", 0) as server:
        loop = threading.Thread(target=server.serve_forever, daemon=True)
        loop.start()
        yield server.port
        server.shutdown()
        loop.join(TIMEOUT)


def open_ws(port: int, path: str, origin: str | None = SITE, cookie: str | None = None) -> Any:
    headers = {"Cookie": cookie} if cookie else None
    return connect(
        f"ws://127.0.0.1:{port}{path}",
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=TIMEOUT,
        **LEGACY,
    )


def refused(port: int, path: str, origin: str | None = SITE, cookie: str | None = None) -> int:
    with pytest.raises(InvalidStatus) as refusal:
        open_ws(port, path, origin, cookie)
    return refusal.value.response.status_code


def received(ws: ClientConnection) -> Any:
    return json.loads(ws.recv(timeout=TIMEOUT))


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


@pytest.mark.parametrize("path", ["/cookie", "/database"])
def test_a_session_cookie_from_the_site(port: int, path: str) -> None:
    with open_ws(port, path, cookie="theme=dark; session=s-ada") as ws:
        assert received(ws) == {"type": "welcome", "user": "ada"}


@pytest.mark.parametrize("path", ["/cookie", "/database"])
def test_no_or_unknown_session_is_401(port: int, path: str) -> None:
    assert refused(port, path) == 401
    assert refused(port, path, cookie="session=s-nobody") == 401
    assert refused(port, path, cookie="session") == 401


@pytest.mark.parametrize("path", ["/cookie", "/database"])
def test_a_valid_cookie_from_another_site_is_403(port: int, path: str) -> None:
    assert refused(port, path, origin="https://evil.example", cookie="session=s-ada") == 403
    assert refused(port, path, origin=None, cookie="session=s-ada") == 403
    assert refused(port, path, origin="http://app.example.com", cookie="session=s-ada") == 403


def test_the_first_message_authenticates(port: int) -> None:
    with open_ws(port, "/first-message", origin=None) as ws:
        ws.send(json.dumps({"type": "auth", "token": "t-grace"}))
        assert received(ws) == {"type": "welcome", "user": "grace"}
        ws.send("hello")
        assert received(ws) == {"type": "echo", "user": "grace", "message": "hello"}


@pytest.mark.parametrize(
    "first",
    [
        json.dumps({"type": "auth", "token": "t-nobody"}),
        json.dumps({"type": "auth", "token": ["t-grace"]}),
        json.dumps(["auth", "t-grace"]),
        json.dumps({"type": "hello"}),
        "t-grace",
        b"\x00binary",
    ],
)
def test_a_bad_first_message_is_closed_with_1008(port: int, first: str | bytes) -> None:
    with open_ws(port, "/first-message", origin=None) as ws:
        ws.send(first)
        assert closed_with(ws) == (1008, "invalid credentials")


def test_silence_is_closed_with_1008_after_the_auth_timeout(port: int) -> None:
    with open_ws(port, "/first-message", origin=None) as ws:
        assert closed_with(ws) == (1008, "authenticate first")


def test_the_auth_deadline_is_cancelled_once_authenticated(port: int) -> None:
    with open_ws(port, "/first-message", origin=None) as ws:
        ws.send(json.dumps({"type": "auth", "token": "t-grace"}))
        assert received(ws)["type"] == "welcome"
        done = threading.Event()
        done.wait(AUTH_TIMEOUT * 3)  # past the deadline: still open
        ws.send("still here")
        assert received(ws)["message"] == "still here"
