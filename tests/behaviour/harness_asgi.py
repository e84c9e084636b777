"""The behaviour suite through ASGIApp inside uvicorn (with
:class:`spoc_sockets.uvicorn.WSProtocol`), on 127.0.0.1.

uvicorn serves the TLS (from the certificate's files; the harness sets its tickets). The
shutdown and drain deadlines are the ASGI server's, not options of :class:`ASGIApp`: this
harness takes neither."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from spoc_sockets import Router
from spoc_sockets.asgi import ASGIApp
from spoc_sockets.uvicorn import WSProtocol

from .harness import DEFAULTS, Options
from .harness_net import NetServer, net_harness


@contextmanager
def run_uvicorn(
    app: Any, tickets: int = 0, **config: Any
) -> Iterator[tuple[int, asyncio.AbstractEventLoop]]:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread (``config``: more of
    ``uvicorn.Config``'s arguments): its port and event loop, until the block ends. Over
    TLS, it issues ``tickets`` session tickets (``tests/selfsigned.py`` says why none)."""
    config = {"ws": WSProtocol, "ws_max_size": 2**26, "log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, **config))
    server.config.load()  # (uvicorn loads it once) its TLS context, to set the tickets
    if server.config.ssl is not None:
        server.config.ssl.num_tickets = tickets
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),))
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield server.servers[0].sockets[0].getsockname()[1], loop
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        loop.close()


@contextmanager
def start(router: Router, options: Options = DEFAULTS) -> Iterator[NetServer]:
    app = ASGIApp(router)
    tls = options.tls
    with run_uvicorn(
        app,
        tls.tickets if tls else 0,
        lifespan="on",
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
    ) as (port, loop):

        def shutdown() -> None:
            asyncio.run_coroutine_threadsafe(app.shutdown(), loop).result(timeout=30)

        yield NetServer(port, shutdown)


OPTIONS = frozenset({"tls"})
HARNESS = net_harness(start, OPTIONS, "asgi")
SERVER_OWNS_BYTES = True  # uvicorn parses the handshake and the frames
