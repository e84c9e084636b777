"""An echo server for the Autobahn|Testsuite fuzzing client.

::

    python conformance/echo_server.py [threads|trio|asyncio] [--port 9001]

Serves one channel at ``/`` on 127.0.0.1 that sends every text or binary message back
as it came, with permessage-deflate accepted (cases 12.x and 13.x), no keepalive pings
(they would interleave with the suite's expected frames) and limits large enough for the
suite's biggest messages (16 MiB in cases 9.x).

The first line printed is ``listening on 127.0.0.1:<port> (<adapter>)``; tools wait for
it. SIGINT or SIGTERM stops the server gracefully.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from spoc_sockets import ChannelServer, Connection, Router
from spoc_sockets.__main__ import ADAPTERS, run

HOST = "127.0.0.1"


class Echo(ChannelServer):
    """Send every message back to its sender, text as text and binary as binary."""

    max_message_size = 64 * 2**20
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="spoc_sockets echo server for Autobahn")
    parser.add_argument("adapter", nargs="?", choices=sorted(ADAPTERS), default="threads")
    parser.add_argument("--port", type=int, default=9001, help="port (0: any free port)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (INFO, DEBUG...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    def announce(port: int) -> None:
        print(f"listening on {HOST}:{port} ({args.adapter})", flush=True)

    try:
        run(echo_router(), HOST, args.port, args.adapter, announce)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
