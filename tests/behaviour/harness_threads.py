"""The behaviour suite over :mod:`spoc_sockets.threads` (loop in a background thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from spoc_sockets import Router
from spoc_sockets.threads import serve

from .harness import DEFAULTS, Options
from .harness_net import HOST, TIMEOUT, NetServer, net_harness


@contextmanager
def start(router: Router, options: Options = DEFAULTS) -> Iterator[NetServer]:
    with serve(router, HOST, 0, **options.keywords()) as server:
        thread = threading.Thread(target=server.serve_forever, name="spoc-threads-loop")
        thread.start()
        try:
            yield NetServer(server.port, server.shutdown)
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
            assert not thread.is_alive(), "serve_forever did not return after shutdown()"


OPTIONS = frozenset({"tls", "shutdown_timeout", "drain_timeout"})
HARNESS = net_harness(start, OPTIONS, "threads")
