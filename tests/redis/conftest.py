"""A real ``redis-server`` (Debian's package, which scripts/test installs) on 127.0.0.1,
on a free port, in the test's own directory: append-only file on, fsync on every write,
no RDB snapshots, so a ``kill -9`` and a restart from the AOF keeps every write Redis
answered."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

START_TIMEOUT = 20.0  # seconds for redis-server to answer PING
STOP_TIMEOUT = 10.0


def redis_server_path() -> str:
    path = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if path is None:
        pytest.fail(
            "redis-server is missing: scripts/test installs it "
            "(as root: apt-get install -y --no-install-recommends redis-server)"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; :meth:`kill` (``kill -9``) and :meth:`start` again
    restart it from its append-only file, on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            redis_server_path(),
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.directory / "redis.log").read_text(errors="replace")
                        raise AssertionError(f"redis-server did not start:\n{log}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """``kill -9``: no shutdown, no last save."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
