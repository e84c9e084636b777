"""``spoc-sockets serve module:router`` run as a real process, and ``spoc_sockets.run``."""

from __future__ import annotations

import importlib.metadata
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import spoc_sockets
from spoc_sockets import Router, UsageError, run
from spoc_sockets.cli import load_router

from .behaviour.harness_net import LEGACY
from .processes import ServerProcess, running
from .selfsigned import client_context, make_certificate

ADAPTERS = ["asyncio", "trio", "threads"]
COMMAND = [sys.executable, "-c", "from spoc_sockets.cli import main; main()"]
SERVING = (
    r"^spoc_sockets serving \S+ \((\w+)(?:, (\d+) workers)?\) on (https?)://127\.0\.0\.1:(\d+)/$"
)
TIMEOUT = 10.0

APP = """
import os

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router
from spoc_sockets.channels.chat import ChatServer

router = Router()


@router.channel("/echo")
class Echo(ChannelServer):
    def authenticate(self, request: Request) -> object:
        if request.query.get("token") != "secret":
            raise Reject(401, "invalid token")
        return "ada"

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


class Pid(ChannelServer):
    def on_connect(self, conn: Connection) -> None:
        conn.send(str(os.getpid()))


def make_router() -> Router:
    made = Router()
    made.add("/pid", Pid())
    made.add("/chat", ChatServer())
    return made


not_a_router = 42


def needs_arguments(name: str) -> Router:
    return router


def returns_nothing() -> None:
    return None
"""

INVALID_OPTION = """
from spoc_sockets import ChannelServer, Router

router = Router()
router.add("/echo", ChannelServer(max_message_size="big"))
"""

ASYNC_HOOK = """
from spoc_sockets import ChannelServer, Connection, Reject, Request, Router

router = Router()


@router.channel("/echo")
class Echo(ChannelServer):
    async def authenticate(self, request: Request) -> object:
        if request.query.get("token") != "secret":
            raise Reject(401, "invalid token")
        return "ada"

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    for name, source in (("userapp", APP), ("invalid", INVALID_OPTION), ("asynchooks", ASYNC_HOOK)):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return tmp_path


def serve(app_dir: Path, *args: str) -> ServerProcess:
    return ServerProcess([*COMMAND, "serve", *args], app_dir, None)


def started(server: ServerProcess) -> int:
    """The port the server announced."""
    return int(server.wait_for_line(SERVING).group(4))


def close_code(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(100):
            ws.recv(timeout=TIMEOUT)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


def refused_status(url: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=TIMEOUT, **LEGACY)
    return refused.value.response.status_code


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_serves_a_users_router_then_stops_with_1001(app_dir: Path, adapter: str) -> None:
    with running(
        [*COMMAND, "serve", "userapp:router", "--port", "0", "--adapter", adapter], app_dir
    ) as server:
        match = server.wait_for_line(SERVING)
        assert match.group(1) == adapter
        port = int(match.group(4))
        assert refused_status(f"ws://127.0.0.1:{port}/echo?token=wrong") == 401
        assert refused_status(f"ws://127.0.0.1:{port}/nowhere") == 404
        with connect(
            f"ws://127.0.0.1:{port}/echo?token=secret", open_timeout=TIMEOUT, **LEGACY
        ) as ws:
            ws.send("hello")
            assert ws.recv(timeout=TIMEOUT) == "hello"
            assert server.stop(signal.SIGTERM) == 0
            assert close_code(ws) == 1001
    assert "Traceback" not in server.output


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_sigint_stops_gracefully_too(app_dir: Path, adapter: str) -> None:
    with running(
        [*COMMAND, "serve", "userapp:router", "--port", "0", "--adapter", adapter], app_dir
    ) as server:
        port = started(server)
        with connect(
            f"ws://127.0.0.1:{port}/echo?token=secret", open_timeout=TIMEOUT, **LEGACY
        ) as ws:
            assert server.stop(signal.SIGINT) == 0
            assert close_code(ws) == 1001
    assert "Traceback" not in server.output


def test_a_factory_names_the_router(app_dir: Path) -> None:
    with running([*COMMAND, "serve", "userapp:make_router", "--port", "0"], app_dir) as server:
        port = started(server)
        with connect(f"ws://127.0.0.1:{port}/pid", open_timeout=TIMEOUT, **LEGACY) as ws:
            assert ws.recv(timeout=TIMEOUT) == str(server.popen.pid)
        assert server.stop() == 0


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_tls_with_certfile_and_keyfile(app_dir: Path, adapter: str) -> None:
    cert, key = make_certificate(app_dir)
    command = [*COMMAND, "serve", "userapp:router", "--port", "0", "--adapter", adapter]
    with running([*command, "--certfile", str(cert), "--keyfile", str(key)], app_dir) as server:
        match = server.wait_for_line(SERVING)
        assert match.group(3) == "https"
        trusting = client_context(cert, tls12=True)  # the CLI's context issues tickets
        url = f"wss://127.0.0.1:{match.group(4)}/echo?token=secret"
        with connect(url, ssl=trusting, open_timeout=TIMEOUT, **LEGACY) as ws:
            ws.send("over tls")
            assert ws.recv(timeout=TIMEOUT) == "over tls"
            assert server.stop() == 0
            assert close_code(ws) == 1001


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_two_workers_serve_one_port(app_dir: Path, adapter: str) -> None:
    command = [*COMMAND, "serve", "userapp:make_router", "--port", "0", "--workers", "2"]
    with running([*command, "--adapter", adapter], app_dir) as server:
        match = server.wait_for_line(SERVING)
        assert (match.group(1), match.group(2)) == (adapter, "2")
        port = int(match.group(4))
        clients: dict[str, ClientConnection] = {}
        try:
            for _ in range(200):  # the kernel spreads connections over the two listeners
                ws = connect(f"ws://127.0.0.1:{port}/pid", open_timeout=TIMEOUT, **LEGACY)
                pid = str(ws.recv(timeout=TIMEOUT))
                if pid in clients:
                    ws.close()
                else:
                    clients[pid] = ws
                if len(clients) == 2:
                    break
            assert len(clients) == 2, "every connection reached the same worker"
            assert str(server.popen.pid) not in clients  # the parent only supervises
            assert server.stop(signal.SIGTERM) == 0
            assert [close_code(ws) for ws in clients.values()] == [1001, 1001]
        finally:
            for ws in clients.values():
                ws.close()
    assert "own rooms and streams for /chat" in server.output
    assert "shared broker" in server.output
    assert "Traceback" not in server.output


def run_command(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], cwd=app_dir, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuchmodule:router", "cannot import 'nosuchmodule': no module named 'nosuchmodule'"),
        ("nosuch.package:router", "cannot import 'nosuch.package': no module named 'nosuch'"),
        ("userapp:nothing", "module 'userapp' has no attribute 'nothing'"),
        ("userapp:not_a_router", "userapp:not_a_router is int, not a spoc_sockets.Router"),
        ("userapp:returns_nothing", "userapp:returns_nothing() returned NoneType, not a Router"),
        (
            "userapp:needs_arguments",
            "userapp:needs_arguments takes arguments: not a Router factory",
        ),
        ("userapp", "expected package.module:router, got 'userapp'"),
        ("invalid:router", "max_message_size is a positive whole number or None, not 'big'"),
    ],
)
def test_every_mistake_is_one_line_and_status_2(app_dir: Path, target: str, message: str) -> None:
    result = run_command(app_dir, "serve", target, "--port", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"spoc-sockets: error: {message}"]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--log-level", "LOUD"], "log_level must be a logging level (INFO, DEBUG...), not 'LOUD'"),
        (["--workers", "0"], "workers must be an int of at least 1, not 0"),
        (["--port", "70000"], "port must be an int from 0 to 65535, not 70000"),
        (["--keyfile", "key.pem"], "--keyfile needs --certfile"),
        (["--certfile", "missing.pem"], "cannot load the TLS certificate 'missing.pem'"),
    ],
)
def test_bad_options_are_one_line_and_status_2(
    app_dir: Path, options: list[str], message: str
) -> None:
    result = run_command(app_dir, "serve", "userapp:router", *options)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"spoc-sockets: error: {message}")


@pytest.mark.parametrize("adapter", ["asyncio", "trio"])
def test_async_hooks_are_awaited(app_dir: Path, adapter: str) -> None:
    command = [*COMMAND, "serve", "asynchooks:router", "--port", "0", "--adapter", adapter]
    with running(command, app_dir) as server:
        port = started(server)
        assert refused_status(f"ws://127.0.0.1:{port}/echo?token=wrong") == 401
        url = f"ws://127.0.0.1:{port}/echo?token=secret"
        with connect(url, open_timeout=TIMEOUT, **LEGACY) as ws:
            ws.send("awaited")
            assert ws.recv(timeout=TIMEOUT) == "awaited"
            assert server.stop(signal.SIGTERM) == 0
            assert close_code(ws) == 1001
    assert "Traceback" not in server.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_async_hooks_on_threads_are_refused_with_one_line(app_dir: Path, workers: str) -> None:
    result = run_command(
        app_dir, "serve", "asynchooks:router", "--adapter", "threads", "--workers", workers
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()  # once, however many workers met it
    assert line.startswith("spoc-sockets: error: Echo.authenticate is async def")
    assert result.stdout == ""


def test_a_taken_port_is_one_line(app_dir: Path) -> None:
    with running([*COMMAND, "serve", "userapp:router", "--port", "0"], app_dir) as server:
        port = started(server)
        result = run_command(app_dir, "serve", "userapp:router", "--port", str(port))
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith(f"spoc-sockets: error: cannot listen on 127.0.0.1:{port}: ")
        assert server.stop() == 0


def test_version(app_dir: Path) -> None:
    for args in (["--version"], ["serve", "--version"]):
        result = run_command(app_dir, *args)
        assert result.returncode == 0
        assert result.stdout.strip() == f"spoc-sockets {spoc_sockets.__version__}"


def test_help_shows_the_defaults(app_dir: Path) -> None:
    result = run_command(app_dir, "serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for default in (
        "(default: asyncio)",
        "(default: 127.0.0.1)",
        "(default: 8765)",
        "(default: INFO)",
        "(default: 1)",
    ):
        assert default in text
    overview = run_command(app_dir, "--help")
    assert "spoc-sockets serve MODULE:ROUTER" in overview.stdout


@pytest.mark.parametrize("args", [["--port", "0"], ["demo", "--port", "0"]])
def test_without_serve_it_is_the_demo(app_dir: Path, args: list[str]) -> None:
    with running([*COMMAND, *args, "--adapter", "threads"], app_dir) as server:
        match = server.wait_for_line(r"^spoc_sockets demo \(threads\) listening on .*:(\d+)/")
        with connect(f"ws://127.0.0.1:{match.group(1)}/chat", open_timeout=TIMEOUT, **LEGACY) as ws:
            assert '"welcome"' in str(ws.recv(timeout=TIMEOUT))
            assert server.stop() == 0
            assert close_code(ws) == 1001


def test_the_console_script_is_the_cli() -> None:
    [script] = [
        entry
        for entry in importlib.metadata.entry_points(group="console_scripts")
        if entry.name == "spoc-sockets"
    ]
    assert script.value == "spoc_sockets.cli:main"


def test_load_router_in_process(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(app_dir))
    router = load_router("userapp:router")
    assert isinstance(router, Router)
    assert "/echo" in router.channels
    assert load_router("userapp:make_router") is not load_router("userapp:make_router")
    with pytest.raises(UsageError, match=r"not a spoc_sockets\.Router"):
        load_router("userapp:Echo")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"adapter": "gevent"}, "adapter must be one of asyncio, trio, threads, not 'gevent'"),
        ({"adapter": None}, "adapter must be one of"),
        ({"host": ""}, "host must be a non-empty str"),
        ({"host": ["127.0.0.1"]}, "host must be a non-empty str"),
        ({"port": "8765"}, "port must be an int from 0 to 65535, not '8765'"),
        ({"port": -1}, "port must be an int from 0 to 65535, not -1"),
        ({"port": True}, "port must be an int"),
        ({"workers": 0}, "workers must be an int of at least 1, not 0"),
        ({"workers": "2"}, "workers must be an int of at least 1, not '2'"),
        ({"ssl": "cert.pem"}, "ssl must be an ssl.SSLContext or None, not 'cert.pem'"),
        ({"log_level": "LOUD"}, "log_level must be a logging level"),
        ({"log_level": ["INFO"]}, "log_level must be a logging level"),
    ],
)
def test_run_validates_its_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as refused:
        run(Router(), **options)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message)


def test_run_serves_only_a_router() -> None:
    with pytest.raises(UsageError, match=r"run\(\) serves a spoc_sockets\.Router, not dict"):
        run({}, port=0)  # type: ignore[arg-type]


SCRIPT = """
import spoc_sockets
from userapp import router

spoc_sockets.run(
    router, adapter="threads", port=0, log_level="WARNING",
    on_listen=lambda port: print(f"listening on {port}", flush=True),
)
print("run returned", flush=True)
"""


def test_a_script_calling_run_stops_gracefully_on_sigterm(app_dir: Path) -> None:
    (app_dir / "script.py").write_text(SCRIPT)
    with running([sys.executable, "script.py"], app_dir) as server:
        port = server.wait_for_line(r"^listening on (\d+)$").group(1)
        url = f"ws://127.0.0.1:{port}/echo?token=secret"
        with connect(url, open_timeout=TIMEOUT, **LEGACY) as ws:
            assert server.stop(signal.SIGTERM) == 0
            assert close_code(ws) == 1001
    assert server.lines[-1] == "run returned"


def test_run_is_exported() -> None:
    assert spoc_sockets.run is run
    assert "run" in spoc_sockets.__all__
