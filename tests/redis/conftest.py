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
        wait_until_up(self.process, self.port, self.directory / "redis.log")

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


class RedisCluster:
    """A Redis Cluster of three masters (no replicas), each a redis-server on a free
    port in its own directory, made with ``redis-cli --cluster create``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = [cluster_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir()
            command = [
                redis_server_path(),
                "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--logfile", str(node / "redis.log"),
            ]  # fmt: skip
            self.processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
        for process, port in zip(self.processes, self.ports, strict=True):
            wait_until_up(process, port, self.directory / str(port) / "redis.log")
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:  # every node agrees the cluster is up
            client = redis.Redis("127.0.0.1", port, socket_timeout=1, decode_responses=True)
            try:
                while "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    assert time.monotonic() < deadline, "the cluster never came up"
                    time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 < 65_536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port
    raise AssertionError("no free port with a free cluster bus port")


def wait_until_up(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait (bounded) until the redis-server ``process`` answers PING on ``port``."""
    client = redis.Redis("127.0.0.1", port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text(errors="replace") if log.exists() else ""
                    raise AssertionError(f"redis-server did not start:\n{text}") from None
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
