"""Out of file descriptors: every adapter stays quiet, keeps its clients, and serves again.

The server runs in a subprocess whose descriptor limit is low; the test holds silent
connections until the server cannot accept more, then frees some.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest
from websockets.sync.client import connect

from .behaviour.harness_net import LEGACY

SERVER = """
import logging, resource, sys
from spoc_sockets import ChannelServer, Router

class Echo(ChannelServer):
    ping_interval = None
    def on_message(self, conn, message):
        conn.send(message)

router = Router(handshake_timeout=60.0)
router.add("/echo", Echo())
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
adapter = sys.argv[1]
if adapter == "asyncio":
    import asyncio
    from spoc_sockets.asyncio import serve
    async def main():
        async with serve(router, "127.0.0.1", 0) as server:
            print(server.port, flush=True)
            await server.serve_forever()
    asyncio.run(main())
elif adapter == "trio":
    import trio
    from spoc_sockets.trio import serve
    async def main():
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, router, "127.0.0.1", 0)
            print(server.port, flush=True)
    trio.run(main)
else:
    from spoc_sockets.threads import serve
    with serve(router, "127.0.0.1", 0) as server:
        print(server.port, flush=True)
        server.serve_forever()
"""


def _lines(stream: object, into: list[str], seen: threading.Event) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.append(line)
        if "accept" in line.lower():
            seen.set()


@pytest.mark.parametrize("adapter", ["asyncio", "trio", "threads"])
def test_out_of_descriptors_is_quiet_and_recovers(adapter: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, adapter],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        port = int(proc.stdout.readline())
        log: list[str] = []
        warned = threading.Event()
        threading.Thread(target=_lines, args=(proc.stderr, log, warned), daemon=True).start()
        for _ in range(80):  # more than the server has descriptors for
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert warned.wait(20), "the server never ran out of descriptors"
        threading.Event().wait(1.5)  # would be thousands of log lines, and tracebacks
        for sock in held[:60]:
            sock.close()
        del held[:60]
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=20, **LEGACY) as ws:
            ws.send("still serving")
            assert ws.recv(timeout=20) == "still serving"
        assert proc.poll() is None
        assert len(log) <= 5, "".join(log[:20])
        assert not any("Traceback" in line for line in log), "".join(log[:40])
    finally:
        for sock in held:
            sock.close()
        proc.kill()
        proc.wait(10)
