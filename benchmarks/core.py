"""The core alone, no sockets: µs per echoed message through a ServerConnection.

Each case feeds one masked client frame with ``receive_data``, lets the channel's
``on_message`` send it back, and takes the answer with ``data_to_send``; the figure is the
median, over ``--repeat`` runs, of the mean CPU time of this process per message over
``--number`` messages (so other work on the machine hardly counts). ``websockets``'
sans-IO ``ServerProtocol`` does the same work for reference, when it is importable.

    python benchmarks/core.py [--repeat 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import struct
import time
from collections.abc import Callable

from spoc_sockets import ChannelServer, Connection, Hub, Router

KEY = base64.b64encode(b"0123456789abcdef").decode()
REQUEST = (
    "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final masked client frame (the mask is random, the frame is built once)."""
    n, mask = len(payload), os.urandom(4)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = int.from_bytes(payload, "little") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return head + mask + masked.to_bytes(n, "little")


class Echo(ChannelServer):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def spoc_echo(frame: bytes, fast_path: bool) -> Callable[[int], float]:
    """Seconds for ``n`` echoes through one ServerConnection."""
    router = Router(fast_path=fast_path)
    router.add("/echo", Echo(max_message_size=2**21))
    conn = Hub(router).open(0.0)
    conn.receive_data(REQUEST, 0.0)
    assert conn.data_to_send(0.0).startswith(b"HTTP/1.1 101")
    size = len(frame) - (2 if len(frame) < 132 else 4 if len(frame) < 65544 else 10) - 4

    def run(n: int) -> float:
        receive, send = conn.receive_data, conn.data_to_send
        start = time.process_time()
        for _ in range(n):
            receive(frame, 0.0)
            out = send(0.0)
        elapsed = time.process_time() - start
        assert len(out) >= size, out[:20]
        return elapsed

    return run


def websockets_echo(frame: bytes) -> Callable[[int], float] | None:
    """The same loop on ``websockets``' ServerProtocol (None: not importable)."""
    try:
        from websockets.frames import Frame, Opcode
        from websockets.server import ServerProtocol
    except ImportError:
        return None
    protocol = ServerProtocol(max_size=2**21)
    protocol.receive_data(REQUEST)
    request = protocol.events_received()[0]
    protocol.send_response(protocol.accept(request))  # type: ignore[arg-type]
    protocol.data_to_send()

    def run(n: int) -> float:
        receive, events = protocol.receive_data, protocol.events_received
        text, binary, out_of = protocol.send_text, protocol.send_binary, protocol.data_to_send
        start = time.process_time()
        for _ in range(n):
            receive(frame)
            for event in events():
                if isinstance(event, Frame):
                    if event.opcode is Opcode.TEXT:
                        text(event.data)
                    elif event.opcode is Opcode.BINARY:
                        binary(event.data)
            out = out_of()
        elapsed = time.process_time() - start
        assert out
        return elapsed

    return run


def measure(run: Callable[[int], float], number: int, repeat: int) -> float:
    """Median µs per message over ``repeat`` runs of ``number`` messages."""
    run(max(1, number // 10))  # warm up
    return statistics.median(run(number) / number * 1e6 for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000, help="32 B messages per run")
    args = parser.parse_args()
    cases = [
        ("text 32 B", client_frame(0x1, b"x" * 32), args.number),
        ("binary 1 MiB", client_frame(0x2, os.urandom(2**20)), max(1, args.number // 400)),
    ]
    print(f"{'message':<14}{'fast path':>12}{'wsproto':>12}{'websockets':>12}   (µs/message)")
    for name, frame, number in cases:
        figures = [
            measure(spoc_echo(frame, True), number, args.repeat),
            measure(spoc_echo(frame, False), number, args.repeat),
        ]
        reference = websockets_echo(frame)
        cells = [f"{figure:12.1f}" for figure in figures]
        cells.append(
            f"{measure(reference, number, args.repeat):12.1f}" if reference else f"{'-':>12}"
        )
        print(f"{name:<14}{''.join(cells)}")


if __name__ == "__main__":
    main()
