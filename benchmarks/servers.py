"""The benchmark servers, one per process.

::

    python benchmarks/servers.py VARIANT [--cpu N] [--profile FILE]

``VARIANT`` is one of :data:`VARIANTS`. Every variant serves the same two paths on
127.0.0.1, on a free port:

* ``/echo`` sends every message back to its sender, as it came;
* ``/broadcast`` sends every message to every client of ``/broadcast``, the sender included.

Keepalive pings and compression are off; the message size and buffer limits are generous
(:data:`MAX_MESSAGE`, :data:`MAX_BUFFERED`). The port is printed alone on the first line
of stdout once the server listens. SIGTERM stops the server gracefully; with ``--profile``
the server runs under :mod:`cProfile` and writes its statistics to ``FILE`` on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # each server imports only its own library (the RSS baseline stays its own)
    from spoc_sockets import Router

HOST = "127.0.0.1"
MAX_MESSAGE = 64 * 2**20  # bytes: far above the 1 MiB messages of the bulk scenario
MAX_BUFFERED = 256 * 2**20  # bytes of output queued per connection before a server gives up
BACKLOG = 1024  # listen queue, the same for every variant

Serve = Callable[[Callable[[int], None]], None]


def announce(port: int) -> None:
    """Tell the parent process which port was picked."""
    print(port, flush=True)


# -- spoc_sockets -------------------------------------------------------------------------


def spoc_router() -> Router:
    """The router shared by the spoc_sockets variants."""
    from spoc_sockets import ChannelServer, Connection, Router

    class Echo(ChannelServer):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            conn.send(message)

    class Broadcast(ChannelServer):
        def on_message(self, conn: Connection, message: str | bytes) -> None:
            self.broadcast(message)

    options = {
        "ping_interval": None,
        "ping_timeout": None,
        "compression": False,
        "max_message_size": MAX_MESSAGE,
        "max_buffered_amount": MAX_BUFFERED,
    }
    router = Router()
    router.add("/echo", Echo(**options))
    router.add("/broadcast", Broadcast(**options))
    return router


def serve_spoc_asyncio(on_listen: Callable[[int], None]) -> None:
    from spoc_sockets.asyncio import serve

    router = spoc_router()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serve(router, HOST, 0, backlog=BACKLOG) as server:
            loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(server.close()))
            on_listen(server.port)
            await server.serve_forever()

    asyncio.run(main())


def serve_spoc_threads(on_listen: Callable[[int], None]) -> None:
    from spoc_sockets.threads import serve

    router = spoc_router()
    with serve(router, HOST, 0, backlog=BACKLOG) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for the loop, which runs in this (the main) thread
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        on_listen(server.port)
        server.serve_forever()


def serve_spoc_trio(on_listen: Callable[[int], None]) -> None:
    from functools import partial

    import trio

    from spoc_sockets.trio import serve

    router = spoc_router()

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, router, HOST, 0, backlog=BACKLOG))
                on_listen(server.port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()  # cancellation is a graceful shutdown
                    break

    trio.run(main)


# -- websockets ---------------------------------------------------------------------------


def serve_websockets_asyncio(on_listen: Callable[[int], None]) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    listeners: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        try:
            if path == "/echo":
                async for message in ws:
                    await ws.send(message)
            elif path == "/broadcast":
                listeners.add(ws)
                try:
                    async for message in ws:
                        broadcast(listeners, message)
                finally:
                    listeners.discard(ws)
            else:
                await ws.close(1008, "unknown path")
        except ConnectionClosed:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with serve(
            handler,
            HOST,
            0,
            compression=None,
            ping_interval=None,
            ping_timeout=None,
            max_size=MAX_MESSAGE,
            backlog=BACKLOG,
        ) as server:
            port = int(next(iter(server.sockets)).getsockname()[1])
            on_listen(port)
            await stop.wait()
        # leaving the block closed every connection (1001) and waited for the handlers

    asyncio.run(main())


VARIANTS: dict[str, Serve] = {
    "spoc-asyncio": serve_spoc_asyncio,
    "websockets-asyncio": serve_websockets_asyncio,
    "spoc-threads": serve_spoc_threads,
    "spoc-trio": serve_spoc_trio,
}


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one (a thousand clients need as many)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one benchmark server")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats here")
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    serve = VARIANTS[args.variant]
    if args.profile is None:
        serve(announce)
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        serve(announce)
    finally:
        profiler.disable()
        profiler.dump_stats(str(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
