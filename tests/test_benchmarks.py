"""The benchmark harness, run small: every server in it honours the contract.

No timing is asserted: the smoke run checks that the load generator builds, that each of
spoc_sockets' adapters (and ``websockets``, the reference peer) echoes every message
unchanged and delivers every broadcast to every client, and that the load generator
notices when a server does not.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"
SMOKE_SERVERS = ("spoc-asyncio", "spoc-threads", "spoc-trio", "spoc-asgi", "websockets-asyncio")
TIMEOUT = 240  # seconds: the smoke run takes about fifteen


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_smoke_run_every_server_honours_the_contract(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--json", str(results)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads(results.read_text())
    samples = document["samples"]
    for name in ("echo-1", "echo-50", "bulk", "handshake-seq", "broadcast-10", "memory-50"):
        for server in SMOKE_SERVERS:
            (sample,) = samples[name][server]
            assert sample is not None, (name, server)
            assert sample["opened"] >= sample["connections"], (name, server)
            if name != "memory-50":
                assert sample["count"] > 0, (name, server)
    for server in SMOKE_SERVERS:
        (broadcast,) = samples["broadcast-10"][server]
        assert broadcast["incomplete"] == 0
        assert broadcast["receivers"] == 10
        assert broadcast["count"] == 10 * broadcast["messages"]  # everyone got everything
    for name in ("stream", "chat"):
        (sample,) = samples[name]["spoc-asyncio"]
        assert sample["incomplete"] == 0 and sample["count"] > 0, name
    (stream,) = samples["stream"]["spoc-asyncio"]
    assert stream["receivers"] == 18  # 20 viewers, the 10 % who never read left out
    assert "| server |" in done.stdout  # the tables


@pytest.fixture
def wrong_echo_port() -> Iterator[int]:
    """A server whose /echo answers every text message upper-cased."""
    ready = threading.Event()
    port: list[int] = []
    stop: list[asyncio.Event] = []
    loop = asyncio.new_event_loop()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message.upper() if isinstance(message, str) else message)

    async def main() -> None:
        stop.append(asyncio.Event())
        async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as s:
            port.append(next(iter(s.sockets)).getsockname()[1])
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port[0]
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)


def loadgen(directory: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Build the load generator into ``directory`` and run it once against ``port``."""
    binary = harness().build_loadgen(directory)
    return subprocess.run(
        [str(binary), "--port", str(port), *args],
        input="go\nbye\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_load_generator_notices_a_wrong_echo(tmp_path: Path, wrong_echo_port: int) -> None:
    done = loadgen(tmp_path, wrong_echo_port, "--mode", "echo", "--text")
    assert done.returncode == 2
    assert "differs from the 32 bytes sent" in done.stderr


def test_the_load_generator_notices_a_refused_upgrade(tmp_path: Path) -> None:
    with serve_http_404() as port:
        done = loadgen(tmp_path, port, "--mode", "idle", "--conns", "3")
    assert done.returncode == 2
    assert "was refused: HTTP/1.1 404" in done.stderr


class serve_http_404:
    """A TCP server that answers any request with a 404 (no upgrade)."""

    def __enter__(self) -> int:
        import socket

        self.stopping = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # to notice the end
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()
