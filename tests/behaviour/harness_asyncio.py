"""The behaviour suite over the asyncio adapter (its loop runs in a background thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager

from spoc_sockets import Router
from spoc_sockets.asyncio import Server, serve

from .harness import DEFAULTS, Options
from .harness_net import HOST, TIMEOUT, NetServer, net_harness


@contextmanager
def start(router: Router, options: Options = DEFAULTS) -> Iterator[NetServer]:
    ready: Future[tuple[asyncio.AbstractEventLoop, Server]] = Future()

    async def main() -> None:
        async with serve(router, HOST, 0, **options.keywords()) as server:
            ready.set_result((asyncio.get_running_loop(), server))
            await server.serve_forever()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=run, name="asyncio-server", daemon=True)
    thread.start()
    loop, server = ready.result(timeout=TIMEOUT)

    stopped = threading.Event()

    def shutdown() -> None:
        if not stopped.is_set():  # once closed, the loop ends and closes
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=60)
            stopped.set()

    try:
        yield NetServer(server.port, shutdown)
    finally:
        shutdown()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the asyncio server did not stop"


OPTIONS = frozenset({"tls", "shutdown_timeout", "drain_timeout"})
HARNESS = net_harness(start, OPTIONS, "asyncio")
