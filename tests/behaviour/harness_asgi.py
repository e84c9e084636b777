"""The behaviour suite through ASGIApp inside uvicorn, on 127.0.0.1.

uvicorn serves the TLS (from the certificate's files). The shutdown and drain deadlines
are the ASGI server's, not options of :class:`ASGIApp`: this harness takes neither."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from spoc_sockets import Router
from spoc_sockets.asgi import ASGIApp

from .harness import DEFAULTS, Options
from .harness_net import NetServer, net_harness


@contextmanager
def start(router: Router, options: Options = DEFAULTS) -> Iterator[NetServer]:
    app = ASGIApp(router)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        ws="wsproto",
        ws_max_size=2**26,
        ssl_certfile=options.tls.cert if options.tls else None,
        ssl_keyfile=options.tls.key if options.tls else None,
    )
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),))
    thread.start()
    started = threading.Event()
    loop.call_soon_threadsafe(lambda: None)
    while not server.started and thread.is_alive():
        started.wait(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]

    def shutdown() -> None:
        asyncio.run_coroutine_threadsafe(app.shutdown(), loop).result(timeout=30)

    try:
        yield NetServer(port, shutdown)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        loop.close()


OPTIONS = frozenset({"tls"})
HARNESS = net_harness(start, OPTIONS, "asgi")
SERVER_OWNS_BYTES = True  # uvicorn parses the handshake and the frames
