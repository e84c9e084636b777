"""The documented ASGI setups (``docs/fastapi.rst``): the FastAPI example served by uvicorn
with each WebSocket backend and by hypercorn, as real processes, with real clients."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .behaviour.harness_net import LEGACY
from .processes import ASGI_SERVERS, asgi_server

APP = "examples.fastapi_app:app"
SITE = "http://localhost:8000"
TIMEOUT = 10.0
#: what uvicorn's websockets-sansio backend (``--ws auto`` when websockets is installed)
#: logs for every refused handshake, though the client gets the refusal intact
SANSIO_SPURIOUS_ERROR = "ASGI callable returned without completing handshake."


def open_ws(port: int, path: str, origin: str | None = SITE, cookie: str | None = None) -> Any:
    return connect(
        f"ws://127.0.0.1:{port}{path}",
        origin=origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie} if cookie else None,
        open_timeout=TIMEOUT,
        **LEGACY,
    )


def refusal(port: int, path: str, origin: str | None = SITE, cookie: str | None = None) -> Any:
    with pytest.raises(InvalidStatus) as refused:
        open_ws(port, path, origin, cookie)
    return refused.value.response


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.match(r"^(ERROR|\[.*\] \[ERROR\])", line)]


@pytest.mark.parametrize("server_name", sorted(ASGI_SERVERS))
def test_refusals_reach_the_client_with_status_and_body(server_name: str) -> None:
    with asgi_server(server_name, APP) as (server, port):
        for (path, origin, cookie), (status, body) in {
            ("/notifications", SITE, None): (401, b"log in first"),
            ("/notifications", SITE, "session=s-nobody"): (401, b"log in first"),
            ("/notifications", "https://evil.example", "session=s-ada"): (
                403,
                b"origin not allowed",
            ),
            ("/notifications", None, "session=s-ada"): (403, b"an Origin header is required"),
            ("/nowhere", SITE, "session=s-ada"): (404, b"no channel at /nowhere\n"),
        }.items():
            response = refusal(port, path, origin, cookie)
            assert (response.status_code, bytes(response.body)) == (status, body)
        with open_ws(port, "/notifications", cookie="session=s-ada") as ws:
            ws.ping().wait(TIMEOUT)  # the server still serves
        assert server.stop(signal.SIGINT) == 0
    errors = error_lines(server.output)
    if server_name == "uvicorn-websockets-sansio":
        assert set(errors) <= {f"ERROR:    {SANSIO_SPURIOUS_ERROR}"}
    else:
        assert errors == []
    assert "Traceback" not in server.output


@pytest.mark.parametrize("server_name", sorted(ASGI_SERVERS))
def test_an_http_endpoint_pushes_to_a_connected_user(server_name: str) -> None:
    with asgi_server(server_name, APP) as (server, port):
        base = f"http://127.0.0.1:{port}"
        with open_ws(port, "/notifications", cookie="session=s-ada") as ada:
            answer = httpx.post(f"{base}/users/ada/notify", json={"text": "hi"}, timeout=TIMEOUT)
            assert answer.status_code == 200
            assert answer.json() == {"delivered": 1}
            assert json.loads(ada.recv(timeout=TIMEOUT)) == {
                "type": "notification",
                "payload": {"text": "hi"},
            }
        assert server.stop(signal.SIGINT) == 0


@pytest.mark.parametrize(
    "server_name", ["uvicorn-WSProtocol", "uvicorn-wsproto", "uvicorn-websockets-sansio"]
)
def test_uvicorn_closes_sessions_with_1012_when_it_stops(server_name: str) -> None:
    with asgi_server(server_name, APP) as (server, port):
        with open_ws(port, "/notifications", cookie="session=s-ada") as ws:
            # uvicorn closes its sessions, then dies of the signal it caught
            assert server.stop(signal.SIGTERM) == -signal.SIGTERM
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1012


#: asyncio's ``Server.wait_closed()`` waits for every connection from 3.12.1 on, and
#: hypercorn awaits it before its graceful timeout (hypercorn issue 308)
HYPERCORN_WAITS_FOR_SESSIONS = sys.version_info >= (3, 12, 1)
GRACEFUL_TIMEOUT = 1  # seconds; hypercorn takes whole ones


def test_hypercorn_on_sigterm_cancels_open_sessions_or_waits_for_them() -> None:
    app = ["--graceful-timeout", str(GRACEFUL_TIMEOUT), APP]
    with asgi_server("hypercorn", *app) as (server, port):
        with open_ws(port, "/notifications", cookie="session=s-ada") as ws:
            if not HYPERCORN_WAITS_FOR_SESSIONS:
                # the sessions still open after the graceful timeout are cancelled
                assert server.stop(signal.SIGTERM) == 0
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=TIMEOUT)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1011
                return
            server.popen.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                server.popen.wait(timeout=4 * GRACEFUL_TIMEOUT)
            ws.ping().wait(TIMEOUT)  # the session is served still
        # ... until its client leaves
        assert server.stop(signal.SIGTERM) == 0
