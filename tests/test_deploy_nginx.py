"""The nginx configuration of ``docs/deploy.rst``, run by a real nginx in front of a server.

nginx (Debian's package; ``scripts/test`` installs it) runs in the foreground as a child
of the test, with a temporary prefix, TLS with a certificate the test makes, and the
configuration file the documentation includes, with only its addresses and paths changed.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websockets_connect

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router
from spoc_sockets.threads import Server, serve

from .behaviour.harness_net import LEGACY, wait_for
from .processes import wait_until_listening
from .selfsigned import client_context, make_certificate


def connect(url: str, **options: object) -> ClientConnection:
    """The websockets client, given a second try when the opening handshake stalls:
    under a loaded machine, nginx was once seen to wait for a request the client had
    sent over a fresh TLS connection (nginx: "client timed out while waiting for
    request"). A second stall fails the test."""
    try:
        return websockets_connect(url, **options)  # type: ignore[arg-type]
    except TimeoutError:
        return websockets_connect(url, **options)  # type: ignore[arg-type]


ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "docs" / "nginx" / "spoc-sockets.conf"
TIMEOUT = 20.0
NGINX_MISSING = (
    "nginx is not installed: the deploy test runs Debian's nginx (scripts/test installs "
    "it; as root: apt-get install -y nginx-light, or nginx)"
)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(path).exists()),
        None,
    )
    if found is None:
        pytest.fail(NGINX_MISSING)
    return found


class Notes(ChannelServer):
    """Echo, behind a token; tells each client what the proxy said about it."""

    def authenticate(self, request: Request) -> object:
        if request.query.get("token") != "s3cret-token":
            raise Reject(401, "invalid token")
        return "ada"

    def on_connect(self, conn: Connection) -> None:
        headers = conn.request.headers
        conn.send_json(
            {
                "proto": headers.get("x-forwarded-proto"),
                "for": headers.get("x-forwarded-for"),
                "host": headers.get("host"),
            }
        )

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def site_config(backend: int, listen: int, cert: Path, key: Path, access_log: Path) -> str:
    """The documented file, pointed at this test's addresses and files."""
    text = SITE.read_text()
    for documented, here in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;"),
        ("server 127.0.0.1:8765;", f"server 127.0.0.1:{backend};"),
        ("/etc/ssl/certs/example.com.pem", str(cert)),
        ("/etc/ssl/private/example.com.key", str(key)),
        ("/var/log/nginx/spoc-sockets.access.log", str(access_log)),
    ):
        assert text.count(documented) == 1, f"{SITE} no longer has {documented!r} once"
        text = text.replace(documented, here)
    return text


def main_config(prefix: Path, site: str) -> str:
    """What /etc/nginx/nginx.conf would hold, kept inside ``prefix``."""
    return f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{site}
}}
"""


@dataclass
class Deployment:
    port: int
    server: Server
    client_tls: ssl.SSLContext
    access_log: Path
    error_log: Path

    def url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.port}{path}"


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    router = Router()
    router.add("/notes", Notes(max_message_size=4 * 2**20))
    cert, key = make_certificate(tmp_path)
    access_log, error_log = tmp_path / "access.log", tmp_path / "error.log"
    with serve(router, "127.0.0.1", 0) as server:
        loop = threading.Thread(target=server.serve_forever, daemon=True)
        loop.start()

        def site(listen: int) -> str:
            return site_config(server.port, listen, cert, key, access_log)

        process, listen = start_nginx(tmp_path, site, error_log)
        try:
            trusting = client_context(cert, tls12=True)  # nginx issues tickets
            yield Deployment(listen, server, trusting, access_log, error_log)
        finally:
            process.terminate()  # fast shutdown of the master and its worker
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)
            print(read(error_log))  # shown when the test failed
            server.shutdown()
            loop.join(TIMEOUT)


def nginx_started(process: subprocess.Popen[bytes], error_log: Path) -> bool:
    """Listening (its workers start once it has bound its ports), or exited."""
    return "start worker process" in read(error_log) or process.poll() is not None


def start_nginx(
    prefix: Path, site: Callable[[int], str], error_log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """nginx serving ``site(port)`` on a free port, once its workers run (another port
    when something took the one chosen before nginx could bind it)."""
    nginx = nginx_binary()
    for _ in range(5):
        listen = free_port()
        error_log.write_text("")
        (prefix / "nginx.conf").write_text(main_config(prefix, site(listen)))
        process = subprocess.Popen(
            [nginx, "-p", str(prefix), "-e", str(error_log), "-c", str(prefix / "nginx.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(partial(nginx_started, process, error_log), TIMEOUT)
        if process.poll() is None:
            wait_until_listening(listen, process, lambda: read(error_log))
            return process, listen
        if "Address already in use" not in read(error_log):
            pytest.fail(f"nginx exited with {process.returncode}: {read(error_log)}")
    pytest.fail(f"nginx found no free port: {read(error_log)}")


def test_a_websocket_session_through_nginx_over_tls(deployment: Deployment) -> None:
    url = deployment.url("/notes?token=s3cret-token")
    tls = deployment.client_tls
    with connect(url, ssl=tls, open_timeout=TIMEOUT, max_size=2**22, **LEGACY) as ws:
        hello = json.loads(ws.recv(timeout=TIMEOUT))
        assert hello == {"proto": "https", "for": "127.0.0.1", "host": "127.0.0.1"}
        ws.send("hello through nginx")
        assert ws.recv(timeout=TIMEOUT) == "hello through nginx"
        big = bytes(range(256)) * 8192  # 2 MiB each way, through the proxy's buffers
        ws.send(big)
        assert ws.recv(timeout=TIMEOUT) == big
        ws.ping()  # control frames pass too
        ws.send("still here")
        assert ws.recv(timeout=TIMEOUT) == "still here"


def test_a_refusal_reaches_the_client_through_nginx(deployment: Deployment) -> None:
    url = deployment.url("/notes?token=wrong")
    with pytest.raises(InvalidStatus) as refused:
        connect(url, ssl=deployment.client_tls, open_timeout=TIMEOUT, **LEGACY)
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == b"invalid token"


def test_the_server_shutdown_reaches_the_client_as_1001(deployment: Deployment) -> None:
    url = deployment.url("/notes?token=s3cret-token")
    with connect(url, ssl=deployment.client_tls, open_timeout=TIMEOUT, **LEGACY) as ws:
        ws.recv(timeout=TIMEOUT)
        threading.Thread(target=deployment.server.shutdown, daemon=True).start()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


def test_the_access_log_has_no_query_string(deployment: Deployment) -> None:
    for token in ("s3cret-token", "wrong"):
        url = deployment.url(f"/notes?token={token}")
        try:
            with connect(url, ssl=deployment.client_tls, open_timeout=TIMEOUT, **LEGACY) as ws:
                ws.recv(timeout=TIMEOUT)
        except InvalidStatus:
            pass
    # nginx writes a session's line when it ends
    wait_for(lambda: read(deployment.access_log).count("/notes") == 2, TIMEOUT)
    log = read(deployment.access_log)
    assert '"GET /notes" 101' in log
    assert '"GET /notes" 401' in log
    assert "token" not in log
    assert "s3cret" not in log
