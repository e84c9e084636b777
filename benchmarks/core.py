"""The core alone, no sockets: µs per echoed message through a ServerConnection.

Each case feeds one masked client frame with ``receive_data`` (whole, or in 64 KiB pieces
as a socket gives a large one), lets the channel's
``on_message`` send it back, and takes the answer with ``data_to_send``; the figure is the
median, over ``--repeat`` runs, of the mean CPU time of this process per message over
``--number`` messages (so other work on the machine hardly counts). ``websockets``'
sans-IO ``ServerProtocol`` does the same work for reference, when it is importable.
The fast path runs with the masker in use (``spoc_sockets._fastpath.MASKER``: the compiled
one when it was built) and again with the pure-Python one; then the maskers alone are
timed (µs per call, the median of ``--repeat`` runs), beside ``websockets``' compiled one.

    python benchmarks/core.py [--repeat 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from spoc_sockets import ChannelServer, Connection, Hub, Router, _fastpath

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


def pieces(data: bytes, size: int) -> tuple[bytes, ...]:
    """``data`` cut every ``size`` bytes."""
    return tuple(data[i : i + size] for i in range(0, len(data), size))


class Echo(ChannelServer):
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def spoc_echo(pieces: tuple[bytes, ...], fast_path: bool) -> Callable[[int], float]:
    """Seconds for ``n`` echoes through one ServerConnection."""
    router = Router(fast_path=fast_path)
    router.add("/echo", Echo(max_message_size=2**21))
    hub = Hub(router)
    conn = hub.open(0.0)
    conn.receive_data(REQUEST, 0.0)
    assert conn.data_to_send(0.0).startswith(b"HTTP/1.1 101")
    whole = sum(map(len, pieces))
    size = whole - (2 if whole < 132 else 4 if whole < 65544 else 10) - 4

    def run(n: int) -> float:
        receive, send, take = conn.receive_data, conn.data_to_send, hub.take_pending
        start = time.process_time()
        for _ in range(n):
            for piece in pieces:
                receive(piece, 0.0)
            take()  # as an adapter's flush does: the hub's pending list stays empty
            out = send(0.0)
        elapsed = time.process_time() - start
        assert len(out) >= size, out[:20]
        return elapsed

    return run


def websockets_echo(pieces: tuple[bytes, ...]) -> Callable[[int], float] | None:
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
            for piece in pieces:
                receive(piece)
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


@contextmanager
def pure_python() -> Iterator[None]:
    """The fast path unmasks and assembles in pure Python meanwhile."""
    saved = _fastpath.unmask, _fastpath.Assembler
    _fastpath.unmask, _fastpath.Assembler = _fastpath.unmask_python, _fastpath.PythonAssembler
    try:
        yield
    finally:
        _fastpath.unmask, _fastpath.Assembler = saved


def pure_python_echo(pieces: tuple[bytes, ...]) -> Callable[[int], float]:
    """The fast path with the pure-Python masker and assembler."""
    inner = spoc_echo(pieces, True)

    def run(n: int) -> float:
        with pure_python():
            return inner(n)

    return run


def masking(size: int, unmask: _fastpath.Masker) -> Callable[[int], float]:
    """Seconds for ``n`` unmaskings of ``size`` bytes."""
    data, key = os.urandom(size), os.urandom(4)

    def run(n: int) -> float:
        start = time.process_time()
        for _ in range(n):
            unmask(data, key)
        return time.process_time() - start

    return run


def maskers() -> list[tuple[str, _fastpath.Masker | None]]:
    """The maskers to time alone (None: not there)."""
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        apply_mask = None
    return [
        ("compiled", _fastpath.unmask_compiled),
        ("python", _fastpath.unmask_python),
        ("websockets", apply_mask),
    ]


def measure(run: Callable[[int], float], number: int, repeat: int) -> float:
    """Median µs per message over ``repeat`` runs of ``number`` messages."""
    run(max(1, number // 10))  # warm up
    return statistics.median(run(number) / number * 1e6 for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000, help="32 B messages per run")
    args = parser.parse_args()
    large = client_frame(0x2, os.urandom(2**20))
    cases = [
        ("text 32 B", (client_frame(0x1, b"x" * 32),), args.number),
        ("binary 1 MiB", (large,), max(1, args.number // 400)),
        ("  64 KiB reads", pieces(large, 65536), max(1, args.number // 400)),
    ]
    print(f"masker in use: {_fastpath.MASKER}")
    columns = ("fast path", "(pure Py)", "wsproto", "websockets")
    print(f"{'message':<14}{''.join(f'{c:>12}' for c in columns)}   (µs/message)")
    for name, frames, number in cases:
        figures = [
            measure(spoc_echo(frames, True), number, args.repeat),
            measure(pure_python_echo(frames), number, args.repeat),
            measure(spoc_echo(frames, False), number, args.repeat),
        ]
        reference = websockets_echo(frames)
        cells = [f"{figure:12.1f}" for figure in figures]
        cells.append(
            f"{measure(reference, number, args.repeat):12.1f}" if reference else f"{'-':>12}"
        )
        print(f"{name:<14}{''.join(cells)}")
    print(f"\n{'unmask':<14}{''.join(f'{name:>12}' for name, _ in maskers())}   (µs/call)")
    for size, label in ((32, "32 B"), (8192, "8 KiB"), (2**20, "1 MiB")):
        number = max(10, args.number * 32 // size)
        cells = [
            f"{measure(masking(size, unmask), number, args.repeat):12.3f}"
            if unmask
            else f"{'-':>12}"
            for _, unmask in maskers()
        ]
        print(f"{label:<14}{''.join(cells)}")


if __name__ == "__main__":
    main()
