"""An echo server for the Autobahn|Testsuite fuzzing client.

::

    python conformance/echo_server.py [threads|trio|asyncio|asgi|asgi-wsproto|asgi-websockets]
        [--port 9001]

Serves one channel at ``/`` on 127.0.0.1 that sends every text or binary message back
as it came, with permessage-deflate accepted (cases 12.x and 13.x), no keepalive pings
(they would interleave with the suite's expected frames) and limits large enough for the
suite's biggest messages (16 MiB in cases 9.x).

``asgi`` serves the same router through :class:`~spoc_sockets.asgi.ASGIApp` inside
uvicorn with :class:`spoc_sockets.uvicorn.WSProtocol`
(``uvicorn --ws spoc_sockets.uvicorn:WSProtocol``); ``asgi-wsproto`` and
``asgi-websockets`` with uvicorn's own implementations (``--ws wsproto``,
``--ws websockets``). There uvicorn parses the bytes, so its settings mirror the
channel's: 64 MiB messages, no pings, compression on.

The first line printed is ``listening on 127.0.0.1:<port> (<adapter>)``; tools wait for
it. SIGINT or SIGTERM stops the server gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from spoc_sockets import ChannelServer, Connection, Router
from spoc_sockets.demo.server import ADAPTERS, run

HOST = "127.0.0.1"


class Echo(ChannelServer):
    """Send every message back to its sender, text as text and binary as binary."""

    max_message_size = 64 * 2**20
    max_fragments = None  # cases 9.3 and 9.4 send 4 MiB in up to 65,536 fragments
    max_buffered_amount = 128 * 2**20
    compression = True
    ping_interval = None
    ping_timeout = None

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def echo_router() -> Router:
    router = Router()
    router.add("/", Echo())
    return router


def run_asgi(router: Router, port: int, ws: str, on_listen: Callable[[int], None]) -> None:
    """Serve ``router`` as an ASGIApp in uvicorn (``ws``: its WebSocket implementation)
    until SIGINT or SIGTERM (uvicorn's own handlers)."""
    # websockets caps a message at 4096 fragments; cases 9.3.x and 9.4.x send 4 MiB in
    # fragments of 64 bytes and up: raise the cap as max_size is raised (read at import)
    os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(2**20))
    import uvicorn

    from spoc_sockets.asgi import ASGIApp

    config = uvicorn.Config(
        ASGIApp(router),
        host=HOST,
        port=port,
        ws=ws,
        ws_max_size=Echo.max_message_size,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=True,
        lifespan="on",
        log_level="warning",
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            on_listen(server.servers[0].sockets[0].getsockname()[1])
        await serving

    asyncio.run(main())


ASGI_SERVERS = {
    "asgi": "spoc_sockets.uvicorn:WSProtocol",
    "asgi-wsproto": "wsproto",
    "asgi-websockets": "websockets",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="spoc_sockets echo server for Autobahn")
    parser.add_argument(
        "adapter", nargs="?", choices=sorted({*ADAPTERS, *ASGI_SERVERS}), default="threads"
    )
    parser.add_argument("--port", type=int, default=9001, help="port (0: any free port)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (INFO, DEBUG...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    def announce(port: int) -> None:
        print(f"listening on {HOST}:{port} ({args.adapter})", flush=True)

    try:
        if args.adapter in ASGI_SERVERS:
            run_asgi(echo_router(), args.port, ASGI_SERVERS[args.adapter], announce)
        else:
            run(echo_router(), HOST, args.port, args.adapter, announce)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
