"""Raw client bytes for tests that speak the protocol by hand."""

from __future__ import annotations

import base64
import os
import socket
import struct

KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade_request(
    path: str = "/echo",
    *,
    method: str = "GET",
    version: str = "13",
    key: str | None = KEY,
    extra: str = "",
    upgrade: str = "websocket",
    http: str = "1.1",
) -> bytes:
    lines = [f"{method} {path} HTTP/{http}", "Host: 127.0.0.1"]
    if upgrade:
        lines += [f"Upgrade: {upgrade}", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def client_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A client frame; masked (as RFC 6455 requires) unless ``mask=False``."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame_code(data: bytes) -> int | None:
    """The close code of the first close frame the server wrote after its 101, if any."""
    _, sep, frames = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    while len(frames) >= 2:
        opcode, n = frames[0] & 0x0F, frames[1] & 0x7F
        start = 2
        if n == 126:
            n, start = struct.unpack("!H", frames[2:4])[0], 4
        elif n == 127:
            n, start = struct.unpack("!Q", frames[2:10])[0], 10
        payload = frames[start : start + n]
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        frames = frames[start + n :]
    return None


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, n, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack("!H", data[i : i + 2]), i + 2
        elif n == 127:
            (n,), i = struct.unpack("!Q", data[i : i + 8]), i + 8
        frames.append((opcode, data[i : i + n]))
        i += n
    return frames


def raw_upgrade(
    port: int, path: str = "/echo", timeout: float = 20.0
) -> tuple[socket.socket, bytes]:
    """A raw socket to 127.0.0.1 past the handshake (its reads bounded by ``timeout``),
    and the bytes read after the 101 head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(upgrade_request(path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    assert status_of(head) == 101
    return sock, rest


def read_until_eof(sock: socket.socket, start: bytes = b"") -> bytes:
    """What the server writes until it closes (a reset counts as closing)."""
    chunks = [start]
    try:
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)
