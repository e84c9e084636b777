"""The demo server (``python -m spoc_sockets``), with embedded defaults and no external service.

Serves a demo page at ``/`` (a chat room and a live video stream, see ``docs/demo.rst``),
the chat channel at ``/chat`` and the stream channel at ``/stream`` and
``/stream/{stream_id}`` on 127.0.0.1:8765, and refuses every other path with 404.
Ctrl-C or SIGTERM stops it gracefully: each client gets close 1001.

``--redis URL`` keeps the chat's rooms on Redis, and shares the streams through it, with
every demo process using it;
the token secret comes from ``SPOC_DEMO_SECRET`` (or ``--secret``) so that they accept
each other's tokens.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from ..cli import SERVERS
from ..cli import run as serve_until_stopped
from ..router import Router
from .app import MIN_SECRET_BYTES, demo_router

__all__ = ["ADAPTERS", "SECRET_VARIABLE", "main", "run"]

logger = logging.getLogger("spoc_sockets")

#: the environment variable the token secret is read from (``--secret`` wins over it)
SECRET_VARIABLE = "SPOC_DEMO_SECRET"


def announce(host: str, port: int, adapter: str) -> None:
    """Tell where the demo listens (the first line of output; tools wait for it)."""
    shown = f"[{host}]" if ":" in host else host
    print(
        f"spoc_sockets demo ({adapter}) listening on http://{shown}:{port}/ (ws: /chat, /stream)",
        flush=True,
    )


#: The adapters the demo (and ``spoc-sockets serve``) can run on.
ADAPTERS = tuple(sorted(SERVERS))


def run(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 8765,
    adapter: str = "asyncio",
    on_listen: Callable[[int], None] | None = None,
) -> None:
    """Serve ``router`` with the named adapter until SIGINT or SIGTERM, then shut down
    gracefully (close 1001 to every client). ``on_listen(port)`` runs once listening.
    The same runner as :func:`spoc_sockets.run`, with the demo's positional order."""
    serve_until_stopped(router, adapter=adapter, host=host, port=port, on_listen=on_listen)


def _log_level(value: str) -> int:
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {value!r}")
    return level


def _secret(value: str) -> bytes:
    secret = value.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise argparse.ArgumentTypeError(
            f"the secret is at least {MIN_SECRET_BYTES} bytes of UTF-8, not {len(secret)}"
        )
    return secret


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(
            f"a Redis URL starts with redis://, rediss:// or unix://, not {value[:40]!r}"
        )
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="spoc-sockets", description="The spoc_sockets demo server: a chat and a stream."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument(
        "--adapter", choices=sorted(ADAPTERS), default="asyncio", help="which adapter serves"
    )
    parser.add_argument(
        "--log-level", type=_log_level, default="INFO", help="logging level (INFO, DEBUG...)"
    )
    parser.add_argument(
        "--redis",
        type=_redis_url,
        metavar="URL",
        help="keep the chat's rooms on this Redis (redis://127.0.0.1:6379/0), and share the "
        "streams through it, with every demo process using it",
    )
    parser.add_argument(
        "--secret",
        type=_secret,
        default=os.environ.get(SECRET_VARIABLE),
        help=f"what signs the tokens (default: ${SECRET_VARIABLE}, else random): processes "
        f"with the same secret accept each other's tokens; at least {MIN_SECRET_BYTES} bytes",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.redis is not None and args.secret is None:
        logger.warning(
            "no secret (--secret or $%s): this process signs tokens with a random one, "
            "so other demo processes on this Redis will refuse its users' tokens (401)",
            SECRET_VARIABLE,
        )
    try:
        router = demo_router(args.redis, args.secret)
    except ImportError as exc:  # --redis without the redis extra
        parser.error(str(exc))
    try:
        run(
            router,
            args.host,
            args.port,
            args.adapter,
            lambda port: announce(args.host, port, args.adapter),
        )
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful shutdown
        logger.info("interrupted")
        sys.exit(130)
    logger.info("stopped")
