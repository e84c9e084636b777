"""``python -m spoc_sockets``: the demo server, with embedded defaults and no external service.

Serves a demo page at ``/`` (a chat room and a live video stream, see ``docs/demo.rst``),
the chat channel at ``/chat`` and the stream channel at ``/stream`` and
``/stream/{stream_id}`` on 127.0.0.1:8765, and refuses every other path with 404.
Ctrl-C or SIGTERM stops it gracefully: each client gets close 1001.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .demo import demo_router
from .router import Router

__all__ = ["ADAPTERS", "demo_router", "main", "run"]

logger = logging.getLogger("spoc_sockets")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def announce(host: str, port: int, adapter: str) -> None:
    """Tell where the demo listens (the first line of output; tools wait for it)."""
    shown = f"[{host}]" if ":" in host else host
    print(
        f"spoc_sockets demo ({adapter}) listening on http://{shown}:{port}/ (ws: /chat, /stream)",
        flush=True,
    )


OnListen = Callable[[int], None]


def run_asyncio(router: Router, host: str, port: int, on_listen: OnListen) -> None:
    import asyncio

    from .asyncio import serve

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in STOP_SIGNALS:
            # (no loop signal handlers on some platforms: Ctrl-C still works there)
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        async with serve(router, host, port) as server:
            on_listen(server.port)
            forever = asyncio.ensure_future(server.serve_forever())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait((forever, stopped), return_when=asyncio.FIRST_COMPLETED)
            forever.cancel()
            stopped.cancel()
        # leaving the block closed the server gracefully: 1001 to every client

    asyncio.run(main())


def run_trio(router: Router, host: str, port: int, on_listen: OnListen) -> None:
    try:
        import trio
    except ImportError:
        sys.exit("the trio adapter needs trio: pip install 'spoc-sockets[trio]'")

    from .trio import serve

    async def main() -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve, router, host, port)
                on_listen(server.port)
                async for _ in signals:
                    nursery.cancel_scope.cancel()  # cancellation = graceful shutdown
                    break

    trio.run(main)


def run_threads(router: Router, host: str, port: int, on_listen: OnListen) -> None:
    from .threads import serve

    with serve(router, host, port) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for the loop, which runs in this (the main) thread
            threading.Thread(target=server.shutdown, daemon=True).start()

        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)
        on_listen(server.port)
        server.serve_forever()


ADAPTERS: dict[str, Callable[[Router, str, int, OnListen], None]] = {
    "asyncio": run_asyncio,
    "trio": run_trio,
    "threads": run_threads,
}


def run(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 8765,
    adapter: str = "asyncio",
    on_listen: OnListen | None = None,
) -> None:
    """Serve ``router`` with the named adapter until SIGINT or SIGTERM, then shut down
    gracefully (close 1001 to every client). ``on_listen(port)`` runs once listening."""
    ADAPTERS[adapter](router, host, port, on_listen or (lambda port: None))


def _log_level(value: str) -> int:
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown log level {value!r}")
    return level


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(
            demo_router(),
            args.host,
            args.port,
            args.adapter,
            lambda port: announce(args.host, port, args.adapter),
        )
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful shutdown
        logger.info("interrupted")
        sys.exit(130)
    logger.info("stopped")


if __name__ == "__main__":
    main()
