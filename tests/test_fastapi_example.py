"""``examples/fastapi_app.py`` served as documented
(``uvicorn ... --ws spoc_sockets.uvicorn:WSProtocol``): FastAPI's
HTTP routes beside the channel, and notifications pushed from an HTTP endpoint."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection

from .processes import asgi_server
from .test_asgi_servers import APP, TIMEOUT, open_ws


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with asgi_server("uvicorn-WSProtocol", APP) as (server, port):
        yield port
    assert "Traceback" not in server.output


def post(port: int, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=TIMEOUT)


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT)


def notification(ws: ClientConnection) -> Any:
    return json.loads(ws.recv(timeout=TIMEOUT))


def test_a_notification_reaches_every_connection_of_its_user_only(port: int) -> None:
    with (
        open_ws(port, "/notifications", cookie="session=s-ada") as ada_tab,
        open_ws(port, "/notifications", cookie="session=s-ada") as ada_phone,
        open_ws(port, "/notifications", cookie="session=s-grace") as grace,
    ):
        assert post(port, "/users/ada/notify", {"text": "for ada"}).json() == {"delivered": 2}
        assert post(port, "/users/grace/notify", {"text": "for grace"}).json() == {"delivered": 1}
        expected = {"type": "notification", "payload": {"text": "for ada"}}
        assert notification(ada_tab) == expected
        assert notification(ada_phone) == expected
        assert notification(grace) == {"type": "notification", "payload": {"text": "for grace"}}
        assert get(port, "/health").json() == {"status": "ok", "connections": 3}
    # a user with no open connection: nothing delivered, nothing kept
    assert post(port, "/users/ada/notify", {"text": "late"}).json() == {"delivered": 0}


def test_connections_are_forgotten_when_they_close(port: int) -> None:
    with open_ws(port, "/notifications", cookie="session=s-grace") as ws:
        ws.ping().wait(TIMEOUT)
    response = post(port, "/users/grace/notify", {"text": "gone"})
    assert response.json() == {"delivered": 0}


@pytest.mark.parametrize("body", ["a string", ["a", "list"], 42, None])
def test_fastapi_validates_the_http_side(port: int, body: object) -> None:
    assert post(port, "/users/ada/notify", body).status_code == 422


def test_http_paths_belong_to_fastapi(port: int) -> None:
    assert get(port, "/health").json()["status"] == "ok"
    missing = get(port, "/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}  # FastAPI's answer
    assert get(port, "/docs").status_code == 200  # FastAPI's own pages still work


def test_the_channel_path_without_an_upgrade(port: int) -> None:
    response = get(port, "/notifications")
    assert response.status_code == 426
    assert response.headers["upgrade"].lower() == "websocket"


def test_a_websocket_handshake_on_an_http_route_is_404(port: int) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_ws(port, "/health", cookie="session=s-ada")
    assert refused.value.response.status_code == 404


MOUNTED = "examples.fastapi_mount:app"


def test_mounted_under_ws_the_channels_answer_below_it() -> None:
    with asgi_server("uvicorn-WSProtocol", MOUNTED) as (server, port):
        with open_ws(port, "/ws/notifications", cookie="session=s-ada") as ada:
            assert post(port, "/users/ada/notify", {"text": "hi"}).json() == {"delivered": 1}
            assert notification(ada) == {"type": "notification", "payload": {"text": "hi"}}
        for path, cookie, status, body in (
            ("/ws/notifications", "session=s-nobody", 401, b"log in first"),
            ("/ws/nowhere", "session=s-ada", 404, b"no channel at /nowhere\n"),
            # outside the mount, FastAPI has no WebSocket route: it closes, uvicorn says 403
            ("/notifications", "session=s-ada", 403, b""),
        ):
            with pytest.raises(InvalidStatus) as refused:
                open_ws(port, path, cookie=cookie)
            assert refused.value.response.status_code == status
            assert bytes(refused.value.response.body or b"") == body
        assert get(port, "/ws/notifications").status_code == 426
        assert server.stop() == -signal.SIGTERM  # uvicorn dies of the signal it handled
    assert "Traceback" not in server.output
