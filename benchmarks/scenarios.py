"""The load: one asyncio event loop, the ``websockets`` asyncio client, against any server.

Every scenario takes the server's base URI (``ws://127.0.0.1:PORT``), a :class:`Probe` on
the server process and the :class:`Counts`, and returns a :class:`Sample`. Each starts
with a short warm-up on the fresh server, outside the measured window.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

#: the client's options: no keepalive, no compression, generous limits (same for every server)
CLIENT_OPTIONS: dict[str, Any] = {
    "compression": None,
    "ping_interval": None,
    "ping_timeout": None,
    "max_size": 64 * 2**20,
    "max_queue": 1024,
    "open_timeout": 30,
    "close_timeout": 10,
}
CONNECT_CONCURRENCY = 50  # handshakes in flight while opening many clients
TIMEOUT = 120.0  # seconds any measured phase may take before the sample is given up
MIB = 2**20


@dataclass(frozen=True)
class Counts:
    """How much work each scenario does."""

    echo_messages: int = 5_000
    echo_size: int = 64
    bulk_messages: int = 200
    bulk_size: int = MIB
    handshakes: int = 500
    broadcast_clients: int = 200
    broadcast_messages: int = 500
    broadcast_size: int = 64
    idle_clients: int = 1_000

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            echo_messages=500,
            bulk_messages=20,
            handshakes=50,
            broadcast_clients=20,
            broadcast_messages=50,
            idle_clients=100,
        )


@dataclass
class Sample:
    """One measurement: the scenario's figure, plus what it cost the server."""

    value: float  # in the scenario's unit
    elapsed: float  # seconds of the measured window
    server_cpu: float  # CPU seconds (user + system) the server used in that window
    extra: dict[str, float] = field(default_factory=dict)


class Probe:
    """Reads a process's CPU time and resident memory from ``/proc`` (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def cpu_seconds(self) -> float:
        """CPU time of the live threads, to the microsecond where the kernel tells it."""
        try:
            return sum(self._runtime(task) for task in os.listdir(f"/proc/{self.pid}/task"))
        except (OSError, ValueError):
            return self._ticks()

    def _runtime(self, task: str) -> float:
        with open(f"/proc/{self.pid}/task/{task}/sched") as f:
            for line in f:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.split(":")[1]) / 1000  # milliseconds
        raise ValueError("no se.sum_exec_runtime")

    def _ticks(self) -> float:
        """User + system time from ``/proc/PID/stat``, in clock ticks (10 ms, usually)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the command name: state is field 3, utime 14 and stime 15 (man 5 proc)
        return (int(fields[11]) + int(fields[12])) / self._tick

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for process {self.pid}")


class Window:
    """Wall-clock time and server CPU time of a measured phase."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.cpu = probe.cpu_seconds()
        self.start = time.perf_counter()
        self.elapsed = 0.0
        self.server_cpu = 0.0

    def stop(self) -> None:
        self.elapsed = time.perf_counter() - self.start
        self.server_cpu = self.probe.cpu_seconds() - self.cpu


def _connect(uri: str) -> connect:
    return connect(uri, **CLIENT_OPTIONS)


async def connect_many(uri: str, count: int) -> list[ClientConnection]:
    """Open ``count`` clients, at most :data:`CONNECT_CONCURRENCY` handshakes at a time."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> ClientConnection:
        async with gate:
            ws: ClientConnection = await _connect(uri)
            return ws

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    clients = [r for r in results if isinstance(r, ClientConnection)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await close_many(clients)
        raise RuntimeError(f"{len(failures)} of {count} connections failed: {failures[0]!r}")
    return clients


async def close_many(clients: Sequence[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


async def _timed(awaitable: Awaitable[None]) -> None:
    await asyncio.wait_for(awaitable, TIMEOUT)


async def _round_trips(ws: ClientConnection, message: str | bytes, count: int) -> None:
    for _ in range(count):
        await ws.send(message)
        answer = await ws.recv()
        if len(answer) != len(message):
            raise RuntimeError(f"echo of {len(message)} units came back as {len(answer)}")


async def echo(uri: str, probe: Probe, counts: Counts) -> Sample:
    """Sequential round trips of small text messages on one connection: messages/s."""
    message = "e" * counts.echo_size
    async with _connect(uri + "/echo") as ws:
        await _round_trips(ws, message, 200)  # warm-up
        window = Window(probe)
        await _timed(_round_trips(ws, message, counts.echo_messages))
        window.stop()
    return Sample(counts.echo_messages / window.elapsed, window.elapsed, window.server_cpu)


async def bulk(uri: str, probe: Probe, counts: Counts) -> Sample:
    """Large binary messages, each echoed before the next is sent: MiB/s (one way)."""
    message = os.urandom(counts.bulk_size)
    async with _connect(uri + "/echo") as ws:
        await _round_trips(ws, message, 3)  # warm-up
        window = Window(probe)
        await _timed(_round_trips(ws, message, counts.bulk_messages))
        window.stop()
    mib = counts.bulk_messages * counts.bulk_size / MIB
    return Sample(mib / window.elapsed, window.elapsed, window.server_cpu)


async def _handshakes(uri: str, count: int) -> None:
    for _ in range(count):
        async with _connect(uri):
            pass


async def handshakes(uri: str, probe: Probe, counts: Counts) -> Sample:
    """Sequential connect + close (opening and closing handshakes): handshakes/s."""
    await _handshakes(uri + "/echo", 20)  # warm-up
    window = Window(probe)
    await _timed(_handshakes(uri + "/echo", counts.handshakes))
    window.stop()
    return Sample(counts.handshakes / window.elapsed, window.elapsed, window.server_cpu)


async def broadcast(uri: str, probe: Probe, counts: Counts) -> Sample:
    """One client sends, the server broadcasts to every client: deliveries/s.

    The sender is one of the clients (it receives its own messages too). The window runs
    from the first send until every client received every message.
    """
    clients = await connect_many(uri + "/broadcast", counts.broadcast_clients)
    sync = "sync"  # tells when every client is registered with the server
    payload = "b" * counts.broadcast_size
    synced = [asyncio.Event() for _ in clients]

    async def reader(index: int, ws: ClientConnection) -> None:
        received = 0
        async for message in ws:
            if message == sync:
                synced[index].set()
            elif len(message) == len(payload):
                received += 1
                if received == counts.broadcast_messages:
                    return
        raise RuntimeError(f"client {index} closed after {received} messages")

    readers = [asyncio.ensure_future(reader(i, ws)) for i, ws in enumerate(clients)]
    sender = clients[0]
    try:
        for _ in range(30):  # a handler may register just after the handshake answer
            await sender.send(sync)
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in synced)), 1.0)
                break
            except asyncio.TimeoutError:
                continue
        else:
            raise RuntimeError("not every client got the broadcast sync message")
        window = Window(probe)

        async def send_all() -> None:
            for _ in range(counts.broadcast_messages):
                await sender.send(payload)
            await asyncio.gather(*readers)

        await _timed(send_all())
        window.stop()
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await close_many(clients)
    deliveries = counts.broadcast_clients * counts.broadcast_messages
    return Sample(deliveries / window.elapsed, window.elapsed, window.server_cpu)


async def memory(uri: str, probe: Probe, counts: Counts) -> Sample:
    """Server RSS with no client and with idle clients: KiB per connection."""
    async with _connect(uri + "/echo") as ws:  # warm-up: lazy imports, first buffers
        await _round_trips(ws, "m" * 64, 10)
    await asyncio.sleep(0.5)
    before = probe.rss_kib()
    window = Window(probe)
    clients = await asyncio.wait_for(connect_many(uri + "/echo", counts.idle_clients), TIMEOUT)
    window.stop()
    try:
        await asyncio.sleep(1.0)  # let the server settle
        after = probe.rss_kib()
    finally:
        await close_many(clients)
    per_connection = (after - before) / counts.idle_clients
    return Sample(
        per_connection,
        window.elapsed,
        window.server_cpu,
        {"rss_idle_kib": float(before), "rss_loaded_kib": float(after)},
    )


Scenario = Callable[[str, Probe, Counts], Awaitable[Sample]]

#: name -> (coroutine, unit, higher is better)
SCENARIOS: dict[str, tuple[Scenario, str, bool]] = {
    "echo": (echo, "msg/s", True),
    "bulk": (bulk, "MiB/s", True),
    "handshake": (handshakes, "handshakes/s", True),
    "broadcast": (broadcast, "deliveries/s", True),
    "memory": (memory, "KiB/conn", False),
}
