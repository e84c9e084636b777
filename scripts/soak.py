"""Soak: thousands of connections under fault injection, on each adapter.

::

    python scripts/soak.py [--duration 300] [--adapter asyncio --adapter trio ...]

Each adapter is soaked in turn, for ``--duration`` seconds each (default 300). The server
under test (``scripts/soak_server.py``) runs in a subprocess on 127.0.0.1, so its RSS
and its open file descriptors are read from outside, in ``/proc/PID``. Workers open and
close connections for the whole duration, each running one scenario at a time, picked at
random (``--seed``) from a mix of well-behaved clients, whose every message must arrive,
and fault injectors on raw sockets:

=================  ===========================================================================
``echo``           ``websockets`` client: messages (some fragmented) to ``/echo``, each echoed
``room``           ``websockets`` clients in one room: each message reaches every member
``reset``          TCP reset (``SO_LINGER`` 0) after the upgrade, mid-frame or mid-request
``half_close``     ``shutdown(SHUT_WR)`` after a message (echoed, then closed) or mid-request
``never_read``     ``/firehose`` sends megabytes to a peer that never reads: it is closed
``oversized``      a message larger than ``max_message_size`` (whole or in two fragments): 1009
``malformed``      an unmasked frame, a reserved opcode, a continuation with no start: 1002
``slow_ok``        the request head trickled in, done before ``handshake_timeout``: served
``slow_late``      the request head trickled in, never done: closed at ``handshake_timeout``
``silent``         a TCP connection that never sends a byte: closed at ``handshake_timeout``
``fragments``      a message in thousands of 1-byte fragments (echoed whole); a message left
                   unfinished at a clean close; a flood of empty continuation frames (a
                   bound on fragments may answer 1008 or 1009 instead)
=================  ===========================================================================

The run has two phases: a warm-up (a fifth of the duration, at least 10 s but at most
half), then the soak proper. After each, the load stops, the server must settle (every
connection gone), the driver reads the stats route (connections still alive), probes
the idle server (silent connections, then more connections than it has descriptors),
lets it settle again, runs ``gc.collect()`` through the stats route, and measures. The
checks, each a line of the verdict (the exit status is 1 when one fails):

* ``lost``: messages the well-behaved clients sent that did not arrive (must be 0);
* ``answers``: fault injectors that did not get their documented answer (must be 0);
* ``deadlines``: silent and slow handshakes, and peers that never read, closed by the
  server within its deadline plus a grace; a client served again once the descriptors
  ran out (adapters that parse bytes: uvicorn has no handshake deadline);
* ``rss``: the final RSS (after ``gc.collect()``) is within 10% of the peak RSS of the
  warm-up: a leak grows with the work done, the working set of a busy moment does not;
* ``fds``: the server's open file descriptors are back to their number before the load;
* ``upgraded``: ``router.upgraded`` is empty;
* ``freed``: no closed connection is still alive before ``gc.collect()`` (one that is
  waits for the cyclic collector, with its buffers);
* ``alive``: the server process neither died nor logged a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect

HERE = Path(__file__).resolve().parent
SERVER = HERE / "soak_server.py"
ADAPTERS = ("asyncio", "trio", "threads", "asgi")
HOST = "127.0.0.1"
MAX_MESSAGE = 64 * 1024  # the server's max_message_size (soak_server.MAX_MESSAGE)
WARMUP = 10.0  # seconds of warm-up at least (a fifth of the duration, at most half)
RSS_SLACK = 0.10  # the final RSS may exceed the warm-up's peak by this fraction
GRACE = 10.0  # seconds past a server deadline before a connection counts as not closed
IO_TIMEOUT = 30.0  # seconds any single read or write of the driver may take
SETTLE_TIMEOUT = 60.0  # seconds the server gets to close everything once the load stops


# -- bookkeeping -----------------------------------------------------------------------


@dataclass
class Tally:
    """What one phase of one adapter did; only the driver's own loop writes it."""

    scenarios: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    sent: int = 0  # messages the well-behaved clients sent (counted once per recipient)
    received: int = 0  # of those, arrived intact and in order
    wrong: Counter[str] = field(default_factory=Counter)  # fault: unexpected answer
    late: Counter[str] = field(default_factory=Counter)  # fault: server deadline missed
    examples: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def note(self, counter: Counter[str], key: str, detail: str) -> None:
        counter[key] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{key}: {detail}")


class Unexpected(Exception):
    """A fault injector did not get the answer it expected."""


class Late(Exception):
    """The server did not close a connection by its deadline."""


# -- raw sockets -----------------------------------------------------------------------


def request_head(path: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame; masked with the key 0000 (legal, and the payload stays as is)."""
    first = (0x80 if fin else 0) | opcode
    mask = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, mask | length)
    elif length < 2**16:
        header = struct.pack("!BBH", first, mask | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask | 127, length)
    return header + (b"\0\0\0\0" if masked else b"") + payload


def close_frame(code: int) -> bytes:
    return frame(0x8, struct.pack("!H", code))


class Raw:
    """A client on a raw non-blocking socket: every wait bounded by ``IO_TIMEOUT``."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.buffer = b""
        self.loop = asyncio.get_running_loop()
        self.resets = False  # close with a TCP reset

    async def connect(self) -> None:
        await asyncio.wait_for(self.loop.sock_connect(self.sock, (HOST, self.port)), IO_TIMEOUT)

    async def send(self, data: bytes) -> None:
        await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), IO_TIMEOUT)

    async def recv(self, timeout: float = IO_TIMEOUT) -> bytes:
        """Some bytes; ``b""`` at the end of the stream (a reset counts as one)."""
        try:
            return await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), timeout)
        except ConnectionResetError:
            return b""

    async def fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            data = await self.recv()
            if not data:
                return False
            self.buffer += data
        return True

    async def upgrade(self, path: str) -> None:
        await self.connect()
        await self.send(request_head(path, self.port))
        await self.read_head(101)

    async def read_head(self, status: int) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            data = await self.recv()
            if not data:
                raise Unexpected(f"the connection ended before the response ({status})")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        if not line.startswith(b"HTTP/1.1 %d " % status):
            raise Unexpected(f"expected {status}, got {line!r}")
        return head

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next server frame (opcode, payload), or None at the end of the stream."""
        if not await self.fill(2):
            return None
        first, second = self.buffer[0], self.buffer[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if not await self.fill(4):
                return None
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            if not await self.fill(10):
                return None
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if second & 0x80:
            raise Unexpected("the server masked a frame")
        if not await self.fill(offset + length):
            return None
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return first & 0x0F, payload

    async def read_message(self, *closes: int) -> bytes | None:
        """The next data frame's payload (pings and pongs skipped); the server's messages
        to these clients are never fragmented. None if a close frame with one of
        ``closes`` came instead (then the end of the stream)."""
        while True:
            received = await self.read_frame()
            if received is None:
                raise Unexpected("the connection ended before the message")
            opcode, payload = received
            if opcode in (0x1, 0x2):
                return payload
            if opcode == 0x8:
                if close_code(payload) not in closes:
                    raise Unexpected(f"closed ({close_code(payload)}) before the message")
                await self.expect_end()
                return None

    async def expect_close(self, *codes: int) -> None:
        """Read until the server's close frame (one of ``codes``), then the end of stream."""
        while True:
            received = await self.read_frame()
            if received is None:
                raise Unexpected(f"the connection ended without a close frame ({codes})")
            opcode, payload = received
            if opcode == 0x8:
                code = close_code(payload)
                if code not in codes:
                    raise Unexpected(f"close code {code}, expected one of {codes}")
                break
        await self.expect_end()

    async def expect_end(self) -> None:
        while True:
            data = await self.recv()
            if not data:
                return
            # anything after the close frame is a protocol error of the server's
            raise Unexpected(f"{len(data)} bytes after the close frame")

    async def closed_by_server(self, timeout: float) -> bool:
        """Whether the server ends the stream within ``timeout`` (reading what comes)."""
        deadline = self.loop.time() + timeout
        while (left := deadline - self.loop.time()) > 0:
            try:
                data = await self.recv(left)
            except asyncio.TimeoutError:
                return False
            if not data:
                return True
        return False

    async def echoes(self, text: bytes, tally: Tally) -> None:
        """Send ``text``, a well-behaved message: it must come back."""
        tally.sent += 1
        await self.send(frame(0x1, text))
        if await self.read_message() != text:
            raise Unexpected("the echo differs from the message")
        tally.received += 1

    def finish(self) -> None:
        """Close the socket; with :attr:`resets`, with a TCP reset (``SO_LINGER`` 0)."""
        if self.resets:
            linger = struct.pack("ii", 1, 0)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.sock.close()


def dechunk(body: bytes) -> bytes:
    """The payload of a ``Transfer-Encoding: chunked`` body."""
    payload = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return payload
        payload += body[:size]
        body = body[size + 2 :]


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


# -- scenarios -------------------------------------------------------------------------


@dataclass
class Context:
    port: int
    owns_bytes: bool  # the adapter parses the bytes (not ASGI, where uvicorn does)
    handshake_timeout: float
    close_timeout: float
    rng: random.Random
    tally: Tally


def random_message(rng: random.Random) -> str | bytes:
    size = rng.choice((0, 1, 10, 125, 126, 1000, 4096, 16384, 60000))
    if rng.random() < 0.5:
        return "".join(rng.choice("abcdé€😀") for _ in range(size // 4))
    return rng.randbytes(size)


def fragments(message: str | bytes, rng: random.Random) -> list[str | bytes]:
    """``message`` cut in up to four fragments (the client sends them as one message)."""
    cut = sorted(rng.sample(range(1, len(message)), min(3, len(message) - 1)))
    bounds = [0, *cut, len(message)]
    return [message[a:b] for a, b in itertools.pairwise(bounds)]


async def echo(ctx: Context) -> None:
    """A well-behaved client: each message comes back, unchanged and in order."""
    rng, tally = ctx.rng, ctx.tally
    async with connect(
        f"ws://{HOST}:{ctx.port}/echo", open_timeout=IO_TIMEOUT, max_size=None
    ) as ws:
        tally.connections += 1
        for _ in range(rng.randint(1, 20)):
            message = random_message(rng)
            tally.sent += 1
            if len(message) > 3 and rng.random() < 0.2:
                await ws.send(fragments(message, rng))
            else:
                await ws.send(message)
            answer = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
            if answer != message:
                raise Unexpected("the echo differs from the message")
            tally.received += 1


class Barrier:
    """Wait until ``parties`` tasks are waiting (``asyncio.Barrier`` is Python 3.11+)."""

    def __init__(self, parties: int) -> None:
        self.left = parties
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.event.set()
        await self.event.wait()


async def room(ctx: Context) -> None:
    """Well-behaved clients in one room: every member gets every message, in order."""
    rng, tally = ctx.rng, ctx.tally
    path = f"/room/{rng.getrandbits(64):x}"
    members = rng.randint(2, 6)
    each = rng.randint(1, 10)
    joined, done = Barrier(members), Barrier(members)

    async def member(index: int) -> None:
        async with connect(f"ws://{HOST}:{ctx.port}{path}", open_timeout=IO_TIMEOUT) as ws:
            tally.connections += 1
            if await asyncio.wait_for(ws.recv(), IO_TIMEOUT) != "welcome":
                raise Unexpected("no welcome")
            await asyncio.wait_for(joined.wait(), IO_TIMEOUT)
            tally.sent += each * members  # each message of this member, to each member
            for seq in range(each):
                await ws.send(f"{index}:{seq}")
            expected = dict.fromkeys(range(members), 0)  # next seq from each sender
            for _ in range(each * members):
                text = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                if not isinstance(text, str):
                    raise Unexpected("a binary message in a room of text")
                sender, seq = map(int, text.split(":"))
                if seq != expected[sender]:
                    raise Unexpected(f"message {text} out of order")
                expected[sender] += 1
                tally.received += 1
            await asyncio.wait_for(done.wait(), IO_TIMEOUT)  # nobody leaves early

    await asyncio.gather(*(member(i) for i in range(members)))


@contextlib.asynccontextmanager
async def raw_client(ctx: Context, rcvbuf: int | None = None) -> AsyncIterator[Raw]:
    """A raw client, counted as a connection, closed (or reset, if it says so) at the end."""
    raw = Raw(ctx.port, rcvbuf)
    ctx.tally.connections += 1
    try:
        yield raw
    finally:
        raw.finish()


async def reset(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        raw.resets = True
        where = ctx.rng.choice(("open", "mid-frame", "mid-request"))
        if where == "mid-request":
            await raw.connect()
            await raw.send(request_head("/echo", ctx.port)[:40])
        else:
            await raw.upgrade("/echo")
            if where == "mid-frame":
                await raw.send(frame(0x2, bytes(1000))[:500])
        await asyncio.sleep(ctx.rng.random() * 0.1)


async def half_close(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        if ctx.rng.random() < 0.3:
            await raw.connect()
            await raw.send(request_head("/echo", ctx.port)[:40])
            raw.sock.shutdown(socket.SHUT_WR)
        else:
            await raw.upgrade("/echo")
            await raw.send(frame(0x1, b"half"))
            raw.sock.shutdown(socket.SHUT_WR)
            # uvicorn closes at the end of the stream, without writing the echo
            if ctx.owns_bytes and await raw.read_message() != b"half":
                raise Unexpected("the echo differs from the message")
        if not await raw.closed_by_server(ctx.close_timeout + GRACE):
            raise Unexpected("still open after a half-close")


async def never_read(ctx: Context) -> None:
    async with raw_client(ctx, rcvbuf=4096) as raw:
        raw.resets = True
        await raw.upgrade("/firehose")
        # past the overflow (1008), nothing is read: the close frame cannot get through,
        # and the server must drop the transport at close_timeout
        await asyncio.sleep(ctx.close_timeout + 1.0)
        if not await raw.closed_by_server(GRACE):
            raise Late("a peer that never reads is still connected")


async def oversized(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        await raw.upgrade("/echo")
        if ctx.rng.random() < 0.5:
            await raw.send(frame(0x2, bytes(MAX_MESSAGE + 1)))
        else:
            half = bytes(MAX_MESSAGE // 2 + 1)
            await raw.send(frame(0x2, half, fin=False) + frame(0x0, half))
        await raw.expect_close(1009)


MALFORMED = {
    "unmasked": frame(0x1, b"hello", masked=False),
    "opcode 3": frame(0x3, b"hello"),
    "lone continuation": frame(0x0, b"hello"),
    "fragmented ping": frame(0x9, b"", fin=False),
}


async def malformed(ctx: Context) -> None:
    kind = ctx.rng.choice(sorted(MALFORMED))
    async with raw_client(ctx) as raw:
        await raw.upgrade("/echo")
        await raw.send(MALFORMED[kind])
        try:
            await raw.expect_close(1002)
        except Unexpected as error:
            raise Unexpected(f"{kind}: {error}") from None


async def trickle(raw: Raw, data: bytes, seconds: float) -> None:
    pieces = [data[i : i + 8] for i in range(0, len(data), 8)]
    for piece in pieces:
        await raw.send(piece)
        await asyncio.sleep(seconds / len(pieces))


async def slow_ok(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        await raw.connect()
        await trickle(raw, request_head("/echo", ctx.port), ctx.handshake_timeout * 0.4)
        await raw.read_head(101)
        await raw.echoes(b"slow", ctx.tally)
        await raw.send(close_frame(1000))
        await raw.expect_close(1000)


async def slow_late(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        await raw.connect()
        start = raw.loop.time()
        with contextlib.suppress(OSError):  # the server may close while we trickle
            await trickle(raw, request_head("/echo", ctx.port)[:-2], ctx.handshake_timeout * 2)
        if ctx.owns_bytes:
            left = ctx.handshake_timeout + GRACE - (raw.loop.time() - start)
            if not await raw.closed_by_server(max(left, 0.1)):
                raise Late("a handshake still open past handshake_timeout")


async def silent(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        await raw.connect()
        if not ctx.owns_bytes:
            await asyncio.sleep(ctx.handshake_timeout)
        elif not await raw.closed_by_server(ctx.handshake_timeout + GRACE):
            raise Late("a silent connection still open past handshake_timeout")


TINY = frame(0x0, b"a", fin=False)
EMPTY = frame(0x0, b"", fin=False)


async def fragment_flood(ctx: Context) -> None:
    async with raw_client(ctx) as raw:
        await raw.upgrade("/echo")
        kind = ctx.rng.choice(("whole", "unfinished", "empty"))
        count = MAX_MESSAGE // 2
        # a bound on the fragments of a message may close the connection first (1008/1009)
        if kind == "whole":
            await raw.send(frame(0x1, b"a", fin=False) + TINY * count + frame(0x0, b"a"))
            echoed = await raw.read_message(1008, 1009)
            if echoed is not None and echoed != b"a" * (count + 2):
                raise Unexpected("the echo differs from the message")
            if echoed is not None:
                await raw.send(close_frame(1000))
                await raw.expect_close(1000)
        elif kind == "unfinished":  # the partial message must be freed with the connection
            await raw.send(frame(0x1, b"a", fin=False) + TINY * count + close_frame(1000))
            await raw.expect_close(1000, 1008, 1009)
        else:
            await raw.send(frame(0x1, b"", fin=False) + EMPTY * 4 * count + close_frame(1000))
            await raw.expect_close(1000, 1008, 1009)


SERVER_FDS = 1024  # the server's descriptor limit (RLIMIT_NOFILE)
EXHAUST = SERVER_FDS + 64  # silent connections of the exhaustion probe


async def exhaust(ctx: Context) -> None:
    """More silent connections than the server has descriptors, then a well-behaved
    client: once the server closed the silent ones at ``handshake_timeout``, it must be
    served, and the server must stay quiet meanwhile (no traceback per failed accept)."""
    raws = [Raw(ctx.port) for _ in range(EXHAUST)]
    ctx.tally.connections += EXHAUST
    try:
        for raw in raws:  # the kernel completes them; the server accepts what it can
            await raw.connect()
        await asyncio.sleep(0.5)
        start = asyncio.get_running_loop().time()
        await asyncio.wait_for(echo(ctx), 2 * ctx.handshake_timeout + GRACE)
        if asyncio.get_running_loop().time() - start > ctx.handshake_timeout + GRACE:
            raise Late("a client was not served after the silent ones were closed")
    except asyncio.TimeoutError:
        raise Late("no client served while silent connections held the descriptors") from None
    finally:
        for raw in raws:
            raw.finish()


Scenario = Callable[[Context], Awaitable[None]]
#: each scenario and its weight in the mix
MIX: dict[str, tuple[Scenario, int]] = {
    "echo": (echo, 30),
    "room": (room, 8),
    "reset": (reset, 10),
    "half_close": (half_close, 6),
    "never_read": (never_read, 2),
    "oversized": (oversized, 5),
    "malformed": (malformed, 6),
    "slow_ok": (slow_ok, 3),
    "slow_late": (slow_late, 2),
    "silent": (silent, 2),
    "fragments": (fragment_flood, 4),
}
#: scenarios run outside the mix
SOLO: dict[str, Scenario] = {"quiet_silent": silent, "exhaust": exhaust}
SCENARIO_TIMEOUT = 120.0  # seconds: a scenario still running then is a hang


async def run_one(name: str, ctx: Context) -> None:
    tally = ctx.tally
    tally.scenarios[name] += 1
    try:
        scenario = MIX[name][0] if name in MIX else SOLO[name]
        await asyncio.wait_for(scenario(ctx), SCENARIO_TIMEOUT)
    except Late as late:
        tally.note(tally.late, name, str(late))
    except Exception as error:  # whatever the server answered, the tally goes on
        # a well-behaved client's messages that did not arrive also count as lost
        tally.note(tally.wrong, name, f"{type(error).__name__}: {error}")


async def load(ctx: Context, seconds: float, workers: int) -> None:
    """``workers`` loops, each running random scenarios until ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    names = list(MIX)
    weights = [MIX[n][1] for n in names]

    async def worker() -> None:
        while loop.time() < end:
            await run_one(ctx.rng.choices(names, weights)[0], ctx)

    await asyncio.gather(*(worker() for _ in range(workers)))


# -- the server under test -------------------------------------------------------------


class ServerProcess:
    """``soak_server.py ADAPTER`` in a subprocess; stderr goes to a temporary file."""

    def __init__(self, adapter: str, handshake_timeout: float, close_timeout: float) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        command = [
            sys.executable,
            str(SERVER),
            adapter,
            f"--handshake-timeout={handshake_timeout}",
            f"--close-timeout={close_timeout}",
            f"--max-fds={SERVER_FDS}",
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL
        )
        self.pid = self.process.pid
        self.port = 0

    async def start(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 60)
        if not line.strip():
            raise RuntimeError(f"the server did not start: {self.log()[-2000:]}")
        self.port = int(line)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def status(self, field: str) -> int:
        """A line of ``/proc/PID/status``, in KiB (``VmRSS``, ``VmHWM``)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    async def stats(self, collect: bool = False) -> dict[str, object]:
        """The stats route, over a fresh connection (closed by the server after it)."""
        raw = Raw(self.port)
        try:
            await raw.connect()
            target = "/_soak/stats?gc=1" if collect else "/_soak/stats"
            await raw.send(
                f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
            )
            head = await raw.read_head(200)
            while (data := await raw.recv()) != b"":
                raw.buffer += data
        finally:
            raw.finish()
        body = raw.buffer
        if b"transfer-encoding: chunked" in head.lower():  # uvicorn, without a length
            body = dechunk(body)
        result: dict[str, object] = json.loads(body)
        return result

    def log(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit status (None if it had to be killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode


# -- one adapter -----------------------------------------------------------------------


@dataclass
class Report:
    adapter: str
    tally: Tally
    fds_start: int = 0
    fds_final: int = 0
    rss_warm_kib: int = 0
    rss_warm_peak_kib: int = 0
    rss_peak_kib: int = 0
    rss_final_kib: int = 0
    rss_before_gc_kib: int = 0
    upgraded: int = -1
    alive_before_gc: int = -1
    settle_seconds: float = 0.0
    crashed: str = ""
    tracebacks: int = 0
    log_lines: Counter[str] = field(default_factory=Counter)  # the server's stderr
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


QUIET_PROBES = 4  # silent connections opened on the quiet server after each phase


async def probes(ctx: Context) -> None:
    """Once the load stopped: silent connections to a server that nothing else wakes up
    (every adapter must honour the handshake deadline by itself, not at the next
    unrelated event), then the descriptor exhaustion."""
    await asyncio.gather(*(run_one("quiet_silent", ctx) for _ in range(QUIET_PROBES)))
    if ctx.owns_bytes:  # under ASGI, accepting (and the descriptors) is uvicorn's business
        await run_one("exhaust", ctx)


async def settle(server: ServerProcess, fds_start: int | None) -> tuple[dict[str, object], float]:
    """Wait (bounded) for the server to close everything; its stats then (no gc)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        stats = await server.stats()
        done = stats["upgraded"] == 0 and (fds_start is None or server.fds() <= fds_start)
        if done or loop.time() - start > SETTLE_TIMEOUT:
            return stats, loop.time() - start
        await asyncio.sleep(0.5)


async def steady_fds(server: ServerProcess) -> int:
    """The descriptor count once it stays the same for a second (bounded)."""
    previous, same = -1, 0
    for _ in range(100):
        count = server.fds()
        same = same + 1 if count == previous else 0
        if same >= 10:
            break
        previous = count
        await asyncio.sleep(0.1)
    return previous


async def end_phase(ctx: Context, server: ServerProcess, report: Report) -> dict[str, object]:
    """Once a phase's load is over: settle, count the connections still alive before
    the collector runs (the probes' allocations would run it), probe, settle again, then
    collect. The stats before the collection."""
    stats, report.settle_seconds = await settle(server, report.fds_start)
    alive = int(stats["alive_connections"])  # type: ignore[call-overload]
    report.alive_before_gc = max(report.alive_before_gc, alive)
    report.rss_before_gc_kib = server.status("VmRSS")
    await probes(ctx)
    stats, _ = await settle(server, report.fds_start)
    await server.stats(collect=True)
    return stats


async def soak(adapter: str, args: argparse.Namespace) -> Report:
    server = ServerProcess(adapter, args.handshake_timeout, args.close_timeout)
    report = Report(adapter, Tally())
    try:
        await server.start()
        await server.stats()
        report.fds_start = await steady_fds(server)
        warmup = min(max(args.duration / 5, WARMUP), args.duration / 2)
        ctx = Context(
            server.port,
            adapter != "asgi",
            args.handshake_timeout,
            args.close_timeout,
            random.Random(args.seed),
            report.tally,
        )
        await load(ctx, warmup, args.workers)
        await end_phase(ctx, server, report)
        report.rss_warm_kib = server.status("VmRSS")
        report.rss_warm_peak_kib = server.status("VmHWM")
        await load(ctx, args.duration - warmup, args.workers)
        stats = await end_phase(ctx, server, report)
        report.fds_final = server.fds()
        report.upgraded = int(stats["upgraded"])  # type: ignore[call-overload]
        report.rss_final_kib = server.status("VmRSS")
        report.rss_peak_kib = server.status("VmHWM")
    except Exception as error:  # the server died or stopped answering: the verdict says so
        report.crashed = f"{type(error).__name__}: {error}"
    finally:
        if server.process.poll() is not None and not report.crashed:
            report.crashed = f"the server exited with {server.process.returncode}"
        status = server.stop()
        if status is None:
            report.crashed = report.crashed or "the server did not stop on SIGTERM"
        log = server.log()
        report.tracebacks = log.count("Traceback")
        report.log_lines = Counter(
            line
            for line in log.splitlines()
            if line[:1].isalpha() and not line.startswith("Traceback")
        )
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            (args.logs / f"{adapter}.log").write_text(log)
        if args.verbose and log:
            print(f"--- {adapter} server stderr ---\n{log[-4000:]}", file=sys.stderr)
    judge(report)
    return report


def judge(report: Report) -> None:
    tally = report.tally
    report.checks = {
        "lost": tally.lost == 0,
        "answers": not tally.wrong,
        "deadlines": not tally.late,
        "rss": 0 < report.rss_final_kib <= report.rss_warm_peak_kib * (1 + RSS_SLACK),
        "fds": report.fds_final == report.fds_start > 0,
        "upgraded": report.upgraded == 0,
        "freed": report.alive_before_gc == 0,
        "alive": not report.crashed and report.tracebacks == 0,
    }


# -- the table -------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def table(reports: list[Report]) -> str:
    header = (
        "adapter", "scenarios", "conns", "msgs", "lost", "wrong", "late",
        "RSS warm", "w.peak", "peak", "final", "(pre-gc)", "fds", "upgraded", "unfreed", "verdict",
    )  # fmt: skip
    rows = [header]
    for r in reports:
        t = r.tally
        failed = [name for name, ok in r.checks.items() if not ok]
        rows.append(
            (
                r.adapter,
                str(sum(t.scenarios.values())),
                str(t.connections),
                str(t.sent),
                str(t.lost),
                str(sum(t.wrong.values())),
                str(sum(t.late.values())),
                mib(r.rss_warm_kib),
                mib(r.rss_warm_peak_kib),
                mib(r.rss_peak_kib),
                mib(r.rss_final_kib),
                mib(r.rss_before_gc_kib),
                f"{r.fds_start}->{r.fds_final}",
                str(r.upgraded),
                str(r.alive_before_gc),
                "ok" if r.ok else "FAIL: " + ", ".join(failed),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def details(report: Report) -> str:
    t = report.tally
    lines = [f"{report.adapter}: " + ", ".join(f"{k} {v}" for k, v in sorted(t.scenarios.items()))]
    if report.crashed:
        lines.append(f"  server: {report.crashed}")
    if report.tracebacks:
        lines.append(f"  server logged {report.tracebacks} traceback(s); most frequent lines:")
        lines += [f"    {n} x {line[:100]}" for line, n in report.log_lines.most_common(6)]
    lines.append(f"  settled in {report.settle_seconds:.1f} s after the load stopped")
    lines += [f"  {example}" for example in t.examples]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument(
        "--duration", type=float, default=300.0, metavar="SECONDS",
        help="seconds of load per adapter (default 300)",
    )  # fmt: skip
    parser.add_argument(
        "--adapter", action="append", choices=ADAPTERS,
        help="adapter to soak (repeatable; default: all four)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=16, help="concurrent scenarios (16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenario mix (0)")
    parser.add_argument(
        "--handshake-timeout", type=float, default=3.0, metavar="SECONDS",
        help="the server's handshake_timeout (3)",
    )  # fmt: skip
    parser.add_argument(
        "--close-timeout", type=float, default=2.0, metavar="SECONDS",
        help="the server's close_timeout (2)",
    )  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="print the servers' stderr")
    parser.add_argument(
        "--logs", type=Path, default=None, metavar="DIR",
        help="write each server's stderr to DIR/ADAPTER.log",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.duration > 0:
        parser.error(f"--duration is a positive number of seconds, not {args.duration}")
    if args.workers < 1:
        parser.error(f"--workers is at least 1, not {args.workers}")
    return args


async def amain(args: argparse.Namespace) -> int:
    reports = []
    for adapter in args.adapter or ADAPTERS:
        started = time.monotonic()
        report = await soak(adapter, args)
        reports.append(report)
        print(details(report), f"({time.monotonic() - started:.0f} s)", flush=True)
    print(table(reports))
    return 0 if all(r.ok for r in reports) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
