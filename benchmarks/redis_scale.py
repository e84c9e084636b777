"""What Redis costs the chat: the latency one Redis hop adds, and cross-process fan-out.

::

    python benchmarks/redis_scale.py                 # both figures (about a minute)
    python benchmarks/redis_scale.py --posts 200 --members 300 --fanout-posts 20  # quicker

It starts a ``redis-server`` of its own (on a free port, in a temporary directory, no
persistence) and chat server processes (``python benchmarks/redis_scale.py serve``, the
asyncio adapter, each with a ``RedisBroker``, or a ``MemoryBroker`` for the reference).

* **Latency**: a poster and a reader in one room; the poster posts one message at a time
  and waits for its acknowledgement (its own ``message`` event). *Acknowledged*: from the
  post to the acknowledgement; *delivered*: from the post to the reader's receipt. On
  Redis the poster and the reader are on two processes; with ``MemoryBroker`` on one.
* **Fan-out**: ``--members`` connections (distinct users) in one room, spread over
  ``--nodes`` processes; one of them posts ``--fanout-posts`` messages as fast as they
  are acknowledged; the figure is the messages delivered to members a second, from the
  first post until every member has every message.

The clients all run in this process, on one asyncio loop; its CPU time is printed with
the figures (a client near 100 % of a core measures itself as much as the servers). The
machine's load average is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

TIMEOUT = 60.0  # seconds any one wait lasts at most


# -- the server processes -------------------------------------------------------------------


def serve(broker_url: str) -> None:
    """Serve a chat (``memory``: on a MemoryBroker) on a free port; print the port."""
    from spoc_sockets import Router
    from spoc_sockets.channels.chat import ChatServer
    from spoc_sockets.cli import run

    options: dict[str, object] = {}
    if broker_url != "memory":
        from spoc_sockets.channels.brokers.redis import RedisBroker

        options["broker"] = RedisBroker(broker_url)
    chat = ChatServer(trust_user_param=True, rate=1e6, burst=1e6, max_connections=None, **options)
    router = Router()
    router.add("/chat", chat)
    run(router, port=0, on_listen=lambda port: print(f"port {port}", flush=True))


@contextmanager
def server(broker_url: str) -> Iterator[int]:
    """A chat server process; its port."""
    command = [sys.executable, __file__, "serve", broker_url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"port (\d+)", line)
        if match is None:
            raise SystemExit(f"the chat server did not start: {line!r}")
        yield int(match[1])
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT)


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of this run's own (no persistence); its URL."""
    path = shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server is missing (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        command = [path, "--bind", "127.0.0.1", "--port", str(port), "--dir", directory,
                   "--save", "", "--appendonly", "no", "--logfile", "redis.log"]  # fmt: skip
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=TIMEOUT)


# -- the clients -----------------------------------------------------------------------------


Received = asyncio.Queue[tuple[float, str]]


async def member(port: int, user: str, room: str) -> tuple[object, Received]:
    """A connection that joined ``room``; a queue of the messages it receives: when
    (``time.perf_counter()``), and their text."""
    from websockets.asyncio.client import connect

    ws = await connect(f"ws://127.0.0.1:{port}/chat?user={user}", max_queue=None)
    await ws.send(json.dumps({"type": "join", "room": room}))
    texts: Received = asyncio.Queue()
    joined = asyncio.Event()

    async def read() -> None:
        async for message in ws:
            assert isinstance(message, str)
            if message.startswith('{"type":"message"'):
                texts.put_nowait((time.perf_counter(), json.loads(message)["text"]))
            elif message.startswith('{"type":"joined"'):
                joined.set()

    asyncio.get_running_loop().create_task(read())
    await asyncio.wait_for(joined.wait(), TIMEOUT)
    return ws, texts


async def latency(poster_port: int, reader_port: int, posts: int) -> tuple[list[float], ...]:
    """(acknowledged, delivered) times in milliseconds, one post at a time."""
    poster, acks = await member(poster_port, "poster", "latency")
    reader, received = await member(reader_port, "reader", "latency")
    acknowledged: list[float] = []
    delivered: list[float] = []
    for n in range(posts):
        start = time.perf_counter()
        await poster.send(json.dumps({"type": "post", "room": "latency", "text": str(n)}))  # type: ignore[attr-defined]
        for queue, times in ((acks, acknowledged), (received, delivered)):
            when, text = await asyncio.wait_for(queue.get(), TIMEOUT)
            assert text == str(n)
            times.append((when - start) * 1000)
    for ws in (poster, reader):
        await ws.close()  # type: ignore[attr-defined]
    return acknowledged, delivered


async def fanout(ports: list[int], members: int, posts: int) -> tuple[float, float]:
    """Messages delivered to members a second; the share of a core the clients used."""
    connections = []
    for start in range(0, members, 50):  # in batches: a burst of handshakes is not measured
        batch = [
            member(ports[index % len(ports)], f"m{index}", "fanout")
            for index in range(start, min(start + 50, members))
        ]
        connections += await asyncio.gather(*batch)
    poster = connections[0][0]
    await asyncio.sleep(1.0)  # the presence events of the joins, read
    for _, texts in connections:
        while not texts.empty():
            texts.get_nowait()
    begin, cpu = time.perf_counter(), time.process_time()
    for n in range(posts):
        await poster.send(json.dumps({"type": "post", "room": "fanout", "text": str(n)}))  # type: ignore[attr-defined]

    async def last_of(texts: Received) -> float:
        for _ in range(posts - 1):
            await texts.get()
        return (await texts.get())[0]

    ends = await asyncio.wait_for(asyncio.gather(*(last_of(t) for _, t in connections)), TIMEOUT)
    elapsed = max(ends) - begin
    client = (time.process_time() - cpu) / (time.perf_counter() - begin)
    for ws, _ in connections:
        await ws.close()  # type: ignore[attr-defined]
    return members * posts / elapsed, client


# -- the report --------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(args: argparse.Namespace) -> None:
    rows = []
    cpu = time.process_time()
    wall = time.perf_counter()
    with redis_server() as url, ExitStack() as stack:
        memory = stack.enter_context(server("memory"))
        nodes = [stack.enter_context(server(url)) for _ in range(max(2, args.nodes))]
        for name, poster, reader in (
            ("MemoryBroker, one process", memory, memory),
            ("RedisBroker, two processes", nodes[0], nodes[1]),
        ):
            acked, delivered = asyncio.run(latency(poster, reader, args.posts))
            rows.append((name, acked, delivered))
        rate_memory = asyncio.run(fanout([memory], args.members, args.fanout_posts))
        rate_redis = asyncio.run(fanout(nodes[: args.nodes], args.members, args.fanout_posts))
    client = (time.process_time() - cpu) / (time.perf_counter() - wall)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()};"
          f" load average before: {LOAD[0]:.2f}, after: {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"client: {client:.0%} of one core on average over the run\n")
    print(f"latency ({args.posts} posts, one at a time), ms:")
    print("  broker                          ack p50  ack p99  deliver p50  deliver p99")
    for name, acked, delivered in rows:
        print(
            f"  {name:30}  {statistics.median(acked):7.2f}  {percentile(acked, 0.99):7.2f}"
            f"  {statistics.median(delivered):11.2f}  {percentile(delivered, 0.99):11.2f}"
        )
    print(f"\nfan-out ({args.members} members, {args.fanout_posts} posts):")
    for name, (rate, busy) in (
        ("MemoryBroker, one process", rate_memory),
        (f"RedisBroker, {args.nodes} processes", rate_redis),
    ):
        print(f"  {name:30}  {rate:9.0f} deliveries/s  (client: {busy:.0%} of a core)")


LOAD = os.getloadavg()


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=1000, help="posts for the latency")
    parser.add_argument("--members", type=int, default=1000, help="members of the fan-out room")
    parser.add_argument("--fanout-posts", type=int, default=50, help="posts to the fan-out room")
    parser.add_argument("--nodes", type=int, default=3, help="processes for the fan-out")
    measure(parser.parse_args())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
