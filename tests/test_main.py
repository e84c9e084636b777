"""``python -m spoc_sockets``, the demo server, run as a process with each adapter."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from spoc_sockets.demo.app import STATIC_FILES, demo_router

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ["asyncio", "trio", "threads"]
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
LISTENING = re.compile(
    r"^spoc_sockets demo \((\w+)\) listening on http://127\.0\.0\.1:(\d+)/ \(ws: /chat, /stream\)$"
)


@dataclass
class Demo:
    process: subprocess.Popen[str]
    port: int
    lines: queue.Queue[str | None]
    stderr: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STOP_TIMEOUT)


def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line.rstrip("\n"))
    lines.put(None)


def start_demo(adapter: str, tmp_path: Path, *options: str) -> Demo:
    stderr = tmp_path / f"demo-{adapter}.stderr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SPOC_DEMO_SECRET", None)
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "spoc_sockets", "--port", "0", "--adapter", adapter, *options],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=STARTUP_TIMEOUT)
    except queue.Empty:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)
        pytest.fail(f"no announcement within {STARTUP_TIMEOUT}s: {stderr.read_text()}")
    match = LISTENING.match(first or "")
    if match is None:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)
        pytest.fail(f"unexpected first line {first!r}; stderr: {stderr.read_text()}")
    assert match.group(1) == adapter
    return Demo(process, int(match.group(2)), lines, stderr)


def close_code(ws: ClientConnection) -> int | None:
    """Read what is left (presence events...) until the close; the code received."""
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(100):
            ws.recv(timeout=10)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


@contextmanager
def demo_running(adapter: str, tmp_path: Path, *options: str) -> Iterator[Demo]:
    """The demo, killed on the way out if it still runs."""
    server = start_demo(adapter, tmp_path, *options)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=STOP_TIMEOUT)
        assert server.process.stdout is not None
        server.process.stdout.close()


@pytest.fixture(params=ADAPTERS)
def demo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Demo]:
    with demo_running(request.param, tmp_path) as server:
        yield server


def test_serves_page_and_channels_then_stops_with_1001(demo: Demo) -> None:
    with urllib.request.urlopen(demo.http + "/", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        page = response.read().decode()
    assert "<title>spoc_sockets demo</title>" in page
    for path, content_type in (("/app.js", "application/javascript"), ("/style.css", "text/css")):
        with urllib.request.urlopen(demo.http + path, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith(content_type)

    with connect(demo.ws + "/stream/demo", open_timeout=10) as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "viewing"
    with connect(demo.ws + "/stream", open_timeout=10) as viewer:
        assert json.loads(viewer.recv(timeout=10))["type"] == "viewing"
    with pytest.raises(InvalidStatus) as refused:
        connect(demo.ws + "/nowhere", open_timeout=10)
    assert refused.value.response.status_code == 404

    with urllib.request.urlopen(demo.http + "/token?name=alice", timeout=10) as response:
        issued = json.loads(response.read())
    with connect(demo.ws + "/chat?token=" + issued["token"], open_timeout=10) as chat:
        assert json.loads(chat.recv(timeout=10)) == {"type": "welcome", "user": issued["user"]}
        chat.send(json.dumps({"type": "join", "room": "lobby"}))
        assert json.loads(chat.recv(timeout=10))["type"] == "joined"
        assert demo.stop(signal.SIGTERM) == 0
        assert close_code(chat) == 1001
    assert "Traceback" not in demo.stderr.read_text()


def test_ctrl_c_stops_gracefully(demo: Demo) -> None:
    with connect(demo.ws + "/chat", open_timeout=10) as chat:
        assert json.loads(chat.recv(timeout=10))["type"] == "welcome"
        assert demo.stop(signal.SIGINT) == 0
        assert close_code(chat) == 1001
    assert "Traceback" not in demo.stderr.read_text()


def test_demo_router_mounts_real_channels() -> None:
    from spoc_sockets.channels.chat import ChatServer
    from spoc_sockets.channels.stream import StreamServer

    router = demo_router()
    channels = router.channels
    assert isinstance(channels["/chat"], ChatServer)
    assert isinstance(channels["/stream"], StreamServer)
    assert channels["/stream/{stream_id}"] is channels["/stream"]
    for path in STATIC_FILES:
        assert router.http_handler(path) is not None


def test_static_route_refuses_other_methods(tmp_path: Path) -> None:
    with demo_running("threads", tmp_path) as demo:
        request = urllib.request.Request(demo.http + "/", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
        assert demo.stop() == 0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (["--log-level", "LOUD"], "unknown log level"),
        (["--secret", "short"], "the secret is at least 16 bytes of UTF-8, not 5"),
        (["--secret", ""], "the secret is at least 16 bytes of UTF-8, not 0"),
        (["--redis", "http://127.0.0.1:6379/0"], "a Redis URL starts with redis://"),
        (["--redis"], "expected one argument"),
    ],
)
def test_bad_arguments_are_refused(options: list[str], error: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spoc_sockets", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert error in result.stderr


def test_a_short_secret_in_the_environment_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spoc_sockets"],
        cwd=ROOT,
        env={**os.environ, "SPOC_DEMO_SECRET": "0123456789"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "the secret is at least 16 bytes of UTF-8, not 10" in result.stderr


def test_redis_without_a_secret_warns_that_tokens_will_not_move(tmp_path: Path) -> None:
    # Nothing listens on port 1: the demo starts all the same (the broker connects on use).
    with demo_running("threads", tmp_path, "--redis", "redis://127.0.0.1:1/0") as demo:
        assert demo.stop() == 0
    warning = "other demo processes on this Redis will refuse its users' tokens (401)"
    assert warning in demo.stderr.read_text()
