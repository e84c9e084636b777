"""The server under test of the soak (``scripts/soak.py``), one adapter per process.

::

    python scripts/soak_server.py ADAPTER [--handshake-timeout S] [--close-timeout S]
                                          [--max-fds N]

``ADAPTER`` is ``asyncio``, ``trio``, ``threads`` or ``asgi`` (:class:`ASGIApp` under
uvicorn with :class:`spoc_sockets.uvicorn.WSProtocol`). The server listens on 127.0.0.1,
on a free port, and prints the port alone on the first line of stdout. It serves:

* ``/echo``: every message back to its sender (``max_message_size``: :data:`MAX_MESSAGE`);
* ``/room/{room}``: every message to every client of the same room, the sender included;
  each client first gets the text ``welcome`` (then it is sure to be in the room);
* ``/firehose``: on connect, :data:`FIREHOSE` bytes to the client, more than its
  ``max_buffered_amount`` (a peer that never reads is closed with 1008);
* ``/_soak/stats`` (plain HTTP): the state as JSON (see ``stats`` in
  :func:`make_router`); with ``?gc=1`` the cyclic garbage collector runs first, then
  glibc's ``malloc_trim`` (RSS then measures memory in use, not a past peak).

The process may open ``--max-fds`` file descriptors (default :data:`FD_LIMIT`).
SIGTERM stops the server gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import resource
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from functools import partial

from spoc_sockets import ChannelServer, Connection, Request, Router
from spoc_sockets.router import Response

HOST = "127.0.0.1"
MAX_MESSAGE = 64 * 1024  # bytes: the soak's oversized messages are larger
MAX_BUFFERED = 1024 * 1024  # bytes queued per client before it is closed (1008)
FIREHOSE = 4 * MAX_BUFFERED  # bytes the firehose sends to each client, in 64 KiB messages
CHUNK = 64 * 1024
ADAPTERS = ("asyncio", "trio", "threads", "asgi")
FD_LIMIT = 1024  # the process's file descriptors (RLIMIT_NOFILE): the soak reaches it

#: every Connection ever opened, until it is freed: one still here after it closed and
#: left ``router.upgraded`` is kept alive by a reference cycle (freed only by the collector)
alive: weakref.WeakSet[Connection] = weakref.WeakSet()
counts = {"opened": 0, "closed": 0, "messages": 0}


class Tracked(ChannelServer):
    """Counts connections and messages; keeps a weak reference to every connection."""

    def on_connect(self, conn: Connection) -> None:
        alive.add(conn)
        counts["opened"] += 1

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        counts["closed"] += 1


class Echo(Tracked):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        counts["messages"] += 1
        conn.send(message)


class Rooms(Tracked):
    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.rooms: dict[str, dict[Connection, None]] = {}

    def on_connect(self, conn: Connection) -> None:
        super().on_connect(conn)
        self.rooms.setdefault(conn.request.path_params["room"], {})[conn] = None
        conn.send("welcome")

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        counts["messages"] += 1
        self.broadcast(message, to=tuple(self.rooms[conn.request.path_params["room"]]))

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        super().on_close(conn, code, reason)
        room = conn.request.path_params["room"]
        members = self.rooms[room]
        members.pop(conn, None)
        if not members:
            del self.rooms[room]


class Firehose(Tracked):
    def on_connect(self, conn: Connection) -> None:
        super().on_connect(conn)
        chunk = bytes(CHUNK)
        for _ in range(FIREHOSE // CHUNK):
            conn.send(chunk)


def release_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc), so that RSS shows
    what is in use rather than what a past peak left fragmented."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_router(handshake_timeout: float, close_timeout: float) -> Router:
    options = {
        "max_message_size": MAX_MESSAGE,
        "max_buffered_amount": MAX_BUFFERED,
        "close_timeout": close_timeout,
        "ping_interval": 5.0,
        "ping_timeout": 5.0,
    }
    router = Router(handshake_timeout=handshake_timeout)
    router.add("/echo", Echo(**options))
    rooms = router.add("/room/{room}", Rooms(**options))
    router.add("/firehose", Firehose(**options))

    def stats(request: Request) -> Response:
        """The server's state, for the driver (which measures RSS and fds from outside)."""
        collected = None
        if request.query.get("gc") == "1":
            collected = gc.collect()
            release_free_memory()
        body = {
            "upgraded": len(router.upgraded),
            "clients": {path: len(server.clients) for path, server in router.channels.items()},
            "rooms": len(rooms.rooms),
            "alive_connections": len(alive),
            "gc_counts": gc.get_count(),
            "gc_collected": collected,
            "rss_kib": rss_kib(),
            **counts,
        }
        return Response(200, json.dumps(body), "application/json")

    router.add_http("/_soak/stats", stats)
    return router


def announce(port: int) -> None:
    print(port, flush=True)


def serve_asyncio(router: Router) -> None:
    from spoc_sockets.asyncio import serve

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serve(router, HOST, 0, backlog=1024) as server:
            loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(server.close()))
            announce(server.port)
            await server.serve_forever()

    asyncio.run(main())


def serve_trio(router: Router) -> None:
    import trio

    from spoc_sockets.trio import serve

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, router, HOST, 0, backlog=1024))
                announce(server.port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


def serve_threads(router: Router) -> None:
    from spoc_sockets.threads import serve

    with serve(router, HOST, 0, backlog=1024) as server:

        def stop(signum: int, frame: object) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        announce(server.port)
        server.serve_forever()


def serve_asgi(router: Router) -> None:
    import uvicorn

    from spoc_sockets.asgi import ASGIApp
    from spoc_sockets.uvicorn import WSProtocol

    config = uvicorn.Config(
        ASGIApp(router),
        host=HOST,
        port=0,
        ws=WSProtocol,
        lifespan="on",
        log_level="warning",
        backlog=1024,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            announce(server.servers[0].sockets[0].getsockname()[1])
        await task

    asyncio.run(main())  # uvicorn handles SIGTERM itself


SERVE: dict[str, Callable[[Router], None]] = {
    "asyncio": serve_asyncio,
    "trio": serve_trio,
    "threads": serve_threads,
    "asgi": serve_asgi,
}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the soak's server under test")
    parser.add_argument("adapter", choices=ADAPTERS)
    parser.add_argument("--handshake-timeout", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--close-timeout", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--max-fds", type=int, default=FD_LIMIT, metavar="N")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(args.max_fds, hard), hard))
    SERVE[args.adapter](make_router(args.handshake_timeout, args.close_timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
