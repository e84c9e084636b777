"""Write the seed corpus: ``python fuzz/seeds.py`` (re)creates fuzz/corpus/{handshake,frames}.

Each seed is ``[split][step][flags] + stream`` (see driver.py): valid handshakes on every
channel, each kind of refusal, the HTTP route, and frames of every kind, whole and cut.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from driver import DEFLATE, KEY  # noqa: E402

from tests.core.wire import frame as masked_frame  # noqa: E402

HERE = Path(__file__).parent / "corpus"


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame masked with the key 00 00 00 00 (the payload reads as sent)."""
    return masked_frame(opcode, payload, fin=fin, rsv=rsv, mask=b"\x00\x00\x00\x00")


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason)


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def deflated_final(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)


def request(target: str = "/echo", *lines: str, method: str = "GET", http: str = "1.1") -> bytes:
    head = [
        f"{method} {target} HTTP/{http}",
        "Host: x",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *lines,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


HELLO = frame(0x1, b"hello") + close(1000)

HANDSHAKES = {
    "echo": request() + HELLO,
    "echo-deflate": request("/echo", DEFLATE.strip()) + HELLO,
    "plain": request("/plain") + frame(0x2, b"\x00\x01") + close(1001, b"bye"),
    "rooms": request(
        "/rooms/a%20b?token=t", "Origin: https://ok.example", "Sec-WebSocket-Protocol: x, chat"
    )
    + HELLO,
    "rooms-no-token": request("/rooms/a"),
    "rooms-bad-origin": request("/rooms/a?token=t", "Origin: https://evil.example"),
    "later-accept": request("/later?token=t") + HELLO,
    "later-reject": request("/later?token=no"),
    "later-undecided": request("/later") + HELLO,
    "health": b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "not-found": request("/nowhere"),
    "post": request("/echo", method="POST"),
    "http10": request("/echo", http="1.0"),
    "no-upgrade": b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
    "version-8": request("/echo").replace(b"Version: 13", b"Version: 8"),
    "two-keys": request("/echo", f"Sec-WebSocket-Key: {KEY}"),
    "bad-key": request("/echo").replace(KEY.encode(), b"short"),
    "no-host": request("/echo").replace(b"Host: x\r\n", b""),
    "body": request("/echo", "Content-Length: 5") + b"hello",
    "chunked": request("/echo", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    "bare-lf": request().replace(b"\r\n", b"\n"),
    "obs-fold": request("/echo", "X-A: 1", " folded"),
    "deflate-params": request(
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;"
        " client_max_window_bits=9, permessage-deflate; server_max_window_bits=8",
    ),
    "deflate-bad": request("/echo", "Sec-WebSocket-Extensions: permessage-deflate; x=1, foo"),
    "slowloris": b"GET /echo HTTP/1.1\r\nHost: x\r\n",
    "huge-head": request("/echo", "X-Big: " + "a" * 5000),
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
}

MESSAGE = b"Hello, " * 40
FRAMES = {
    "text": frame(0x1, b"hello"),
    "binary": frame(0x2, bytes(range(256))),
    "fragments": frame(0x1, b"hel", fin=False) + frame(0x9, b"p") + frame(0x0, b"lo"),
    "empty-fragments": frame(0x2, b"", fin=False) + frame(0x0, b"", fin=False) + frame(0x0),
    "ping-pong": frame(0x9, b"ping") + frame(0xA, b"pong") + frame(0xA, b"\x00\x00\x00\x01"),
    "close-reason": close(4000, "fermé".encode()),
    "close-empty": frame(0x8),
    "close-bad-code": close(1005),
    "close-one-byte": frame(0x8, b"\x03"),
    "server-close": frame(0x1, b"close 4001") + frame(0x1, b"after"),
    "broadcast": frame(0x1, b"all"),
    "len-126": frame(0x2, b"x" * 300),
    "utf8-bad": frame(0x1, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"),
    "utf8-split": frame(0x1, "é".encode()[:1], fin=False) + frame(0x0, "é".encode()[1:]),
    "reserved-opcode": frame(0x3, b"x") + frame(0xB),
    "rsv": frame(0x1, b"x", rsv=2),
    "unmasked": b"\x81\x05hello",
    "continuation-alone": frame(0x0, b"x"),
    "compressed": frame(0x1, deflated(MESSAGE), rsv=4),
    "compressed-fragments": (
        frame(0x2, deflated(MESSAGE)[:5], rsv=4, fin=False) + frame(0x0, deflated(MESSAGE)[5:])
    ),
    "final-block": frame(0x1, deflated_final(MESSAGE), rsv=4)
    + frame(0x1, deflated(b"next"), rsv=4),
    "after-final-block": frame(0x2, deflated_final(b"ab") + b"\x00", rsv=4),
    "zip-bomb": frame(0x2, deflated(b"\x00" * 200_000), rsv=4),
    "corrupt-deflate": frame(0x2, b"\xff\xff\xff", rsv=4),
    "msb-length": b"\x82\xff\x80" + b"\x00" * 7 + b"\x00" * 4,
    "pipelined-request": request(),
}

BIG = {  # one seed each: 64-bit lengths, at the 64 KiB limit and past it
    "len-127": frame(0x2, b"y" * 65536),
    "too-big": frame(0x2, b"z" * 65537),
}

OPTIONS = [b"\x00\x00", b"\x01\x00", b"\x07\xff", b"\x00\xa0"]  # whole, bytewise, cut + slow


def write(folder: str, name: str, data: bytes) -> None:
    path = HERE / folder / f"{name}-{hashlib.sha1(data).hexdigest()[:8]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main() -> None:
    for folder in ("handshake", "frames"):
        for old in (HERE / folder).glob("*"):
            old.unlink()
    for name, stream in HANDSHAKES.items():
        write("handshake", name, b"\x00\x00\x00" + stream)
        write("handshake", name + "-split", b"\x05\x10\x00" + stream)
    write("handshake", "echo-paused", b"\x00\x00\x01" + HANDSHAKES["echo"])
    for name, stream in FRAMES.items():
        for flags in (0, 2, 4, 6):  # /echo deflate, /plain, /rooms, /echo without deflate
            write("frames", f"{name}-{flags}", b"\x00\x00" + bytes([flags]) + stream + close(1000))
    for name, stream in BIG.items():
        write("frames", name, b"\x00\x00\x00" + stream + close(1000))
    for options in OPTIONS:
        write("frames", "mixed", options + b"\x00" + b"".join(FRAMES.values()))


if __name__ == "__main__":
    main()
