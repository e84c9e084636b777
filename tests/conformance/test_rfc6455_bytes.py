"""RFC 6455 (sections 4, 5, 7) and RFC 7230 to the byte, on every harness that parses bytes.

Each case sends raw bytes, reads until the server closes the transport (bounded by the
harness: a socket timeout, or virtual time), and checks the answer: an HTTP status (and
the headers the RFC asks for) before the upgrade, a close frame with the right code
after it, then the end of the stream. The in-memory cases of ``tests/core`` go deeper on
one connection; here every adapter must give the same answers.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from spoc_sockets import ChannelServer, Connection, Router
from spoc_sockets._handshake import MAX_QUERY_FIELDS

from ..behaviour.harness import Harness
from ..core.wire import close_payload, frame, parse_answer, parse_frames
from ..frames import KEY, client_frame, upgrade_request

MAX_HEADERS = Router().max_headers


class Echo(ChannelServer):
    max_message_size = 2**16
    ping_interval = None
    close_timeout = 2.0

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


def echo_router() -> Router:
    router = Router(handshake_timeout=2.0)
    router.add("/echo", Echo())
    router.add("/deflate", Echo(compression=True))
    return router


def exchange(serve_bytes: Harness, data: bytes) -> bytes:
    """Send ``data`` on a fresh transport; everything the server wrote until it closed."""
    with serve_bytes(echo_router()) as served:
        raw = served.raw()
        raw.send(data)
        answer = raw.read_all()  # until the server closes the transport
        served.wait_for(lambda: not served.router.upgraded)
    return answer


def header(answer: bytes, name: str) -> list[str]:
    response, _ = parse_answer(answer)
    return [value for key, value in response.headers if key.lower() == name.lower()]


# -- section 4 and RFC 7230: the opening handshake -------------------------------------------

HOST_LINE = "Host: 127.0.0.1\r\n"
REQUEST = upgrade_request("/echo").decode()

REFUSALS = {
    "missing Host": (REQUEST.replace(HOST_LINE, ""), 400),
    "two Hosts": (upgrade_request("/echo", extra="Host: elsewhere\r\n"), 400),
    "no key": (upgrade_request("/echo", key=None), 400),
    "two keys": (upgrade_request("/echo", extra=f"Sec-WebSocket-Key: {KEY}\r\n"), 400),
    "two keys in one field": (upgrade_request("/echo", key=f"{KEY}, {KEY}"), 400),
    "key not base64": (upgrade_request("/echo", key="!!!!not-base64!!!!!!!!=="), 400),
    "key of 15 bytes": (upgrade_request("/echo", key="MDEyMzQ1Njc4OWFiY2Rl"), 400),
    "key of 17 bytes": (upgrade_request("/echo", key="MDEyMzQ1Njc4OWFiY2RlZmc="), 400),
    "empty key": (upgrade_request("/echo", key=""), 400),
    "HTTP/1.0": (upgrade_request("/echo", http="1.0"), 400),
    "HTTP/2.0 on the wire": (upgrade_request("/echo", http="2.0"), 400),
    "HTTP/0.9 shape": (b"GET /echo\r\n\r\n", 400),
    "no Connection: upgrade": (REQUEST.replace("Connection: Upgrade", "Connection: close"), 400),
    "HEAD": (upgrade_request("/echo", method="HEAD"), 405),
    "space before the colon": (upgrade_request("/echo", extra="X-Bad : 1\r\n"), 400),
    "NUL in a value": (upgrade_request("/echo", extra="X-Bad: a\x00b\r\n"), 400),
    "Transfer-Encoding on a GET": (
        upgrade_request("/echo", extra="Transfer-Encoding: chunked\r\n"),
        400,
    ),
    "Transfer-Encoding and Content-Length": (
        upgrade_request("/echo", extra="Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"),
        400,
    ),
    "two different Content-Lengths": (
        upgrade_request("/echo", extra="Content-Length: 0\r\nContent-Length: 5\r\n") + b"hello",
        400,
    ),
    "a body on the GET": (upgrade_request("/echo", extra="Content-Length: 5\r\n") + b"hello", 400),
    "bare LF line ends": (REQUEST.replace("\r\n", "\n"), 400),
    "one bare LF": (REQUEST.replace(HOST_LINE, "Host: 127.0.0.1\n"), 400),
    "obs-fold": (upgrade_request("/echo", extra="X-Folded: 1\r\n 2\r\n"), 400),
    "obs-fold of the key": (
        upgrade_request("/echo", key=None, extra=f"Sec-WebSocket-Key:\r\n {KEY}\r\n"),
        400,
    ),
    "two equal Content-Lengths": (
        upgrade_request("/echo", extra="Content-Length: 0\r\nContent-Length: 0\r\n"),
        400,
    ),
    "not HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
}


def as_bytes(data: str | bytes) -> bytes:
    return data.encode("latin-1") if isinstance(data, str) else data


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_malformed_handshake_is_refused_then_closed(serve_bytes: Harness, case: str) -> None:
    data, status = REFUSALS[case]
    answer = exchange(serve_bytes, as_bytes(data))
    response, rest = parse_answer(answer)
    assert response.status == status, (case, answer[:200])
    assert header(answer, "Connection") == ["close"]
    assert rest == b""  # the refusal, then the end of the stream: never a 101
    assert b"101 Switching" not in answer


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", "", "thirteen"])
def test_wrong_version_is_426_naming_version_13(serve_bytes: Harness, version: str) -> None:
    request = upgrade_request("/echo", version="")
    if version:
        field = f"Sec-WebSocket-Version: {version}\r\n\r\n".encode()
        request = request[:-2] + field
    answer = exchange(serve_bytes, request)
    assert parse_answer(answer)[0].status == 426
    assert header(answer, "Sec-WebSocket-Version") == ["13"]


def test_oversized_head_is_431(serve_bytes: Harness) -> None:
    filler = "".join(f"X-Filler-{i}: {'a' * 200}\r\n" for i in range(90))  # ~20 KB > 16 KiB
    answer = exchange(serve_bytes, upgrade_request("/echo", extra=filler))
    assert parse_answer(answer)[0].status == 431


def test_too_many_header_fields_are_431(serve_bytes: Harness) -> None:
    fields = "".join(f"X-{i}: 1\r\n" for i in range(MAX_HEADERS))  # within the size limit
    answer = exchange(serve_bytes, upgrade_request("/echo", extra=fields))
    response = parse_answer(answer)[0]
    assert response.status == 431
    assert b"header lines" in response.body


def test_header_fields_up_to_the_limit_are_accepted(serve_bytes: Harness) -> None:
    fields = "".join(f"X-{i}: 1\r\n" for i in range(MAX_HEADERS - 6))  # + the 6 of a handshake
    answer = exchange(serve_bytes, upgrade_request("/echo", extra=fields) + frame(0x8))
    assert parse_answer(answer)[0].status == 101


def test_too_many_query_parameters_are_414(serve_bytes: Harness) -> None:
    target = "/echo?" + "&".join(["a"] * (MAX_QUERY_FIELDS + 1))
    response = parse_answer(exchange(serve_bytes, upgrade_request(target)))[0]
    assert response.status == 414
    assert b"too many query parameters" in response.body


def test_query_parameters_up_to_the_limit_are_accepted(serve_bytes: Harness) -> None:
    target = "/echo?" + "&".join(["a=1"] * MAX_QUERY_FIELDS)
    answer = exchange(serve_bytes, upgrade_request(target) + frame(0x8))
    assert parse_answer(answer)[0].status == 101


def test_accept_token_of_the_rfc_example(serve_bytes: Harness) -> None:
    request = upgrade_request("/echo", key="dGhlIHNhbXBsZSBub25jZQ==")  # RFC 6455 section 1.3
    answer = exchange(serve_bytes, request + frame(0x8, close_payload(1000)))
    assert parse_answer(answer)[0].status == 101
    assert header(answer, "Sec-WebSocket-Accept") == ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert [h.lower() for h in header(answer, "Upgrade")] == ["websocket"]
    assert [h.lower() for h in header(answer, "Connection")] == ["upgrade"]


def test_a_second_request_pipelined_after_the_upgrade_is_a_protocol_error(
    serve_bytes: Harness,
) -> None:
    # after the 101 every byte is a frame: "GET ..." reads as RSV bits set (0x47): 1002
    answer = exchange(serve_bytes, upgrade_request("/echo") + upgrade_request("/echo"))
    assert answer.count(b"HTTP/1.1 ") == 1
    assert closing(answer) == (1002, True)


# -- sections 5 and 7: frames after the upgrade ------------------------------------------------


def closing(answer: bytes) -> tuple[int | None, bool]:
    """The code of the server's close frame, and whether it was the last thing written."""
    response, rest = parse_answer(answer)
    assert response.status == 101, answer[:200]
    for f in parse_frames(rest):
        size = len(f.payload)
        rest = rest[2 + (0 if size < 126 else 2 if size < 65536 else 8) + size :]
        if f.opcode == 0x8:
            code = struct.unpack("!H", f.payload[:2])[0] if size >= 2 else None
            return code, rest == b""
    raise AssertionError(f"no close frame in {answer[-100:]!r}")


def long_length(n: int) -> bytes:
    return bytes([0x80 | 127]) + struct.pack("!Q", n)


FRAME_ERRORS = {
    "unmasked text": (client_frame(0x1, b"unmasked", mask=False), 1002),
    "unmasked close": (client_frame(0x8, close_payload(1000), mask=False), 1002),
    "RSV1 without an extension": (frame(0x1, b"x", rsv=4), 1002),
    "RSV2": (frame(0x2, b"x", rsv=2), 1002),
    "RSV3": (frame(0x1, b"x", rsv=1), 1002),
    "RSV on a ping": (frame(0x9, b"x", rsv=4), 1002),
    **{f"reserved opcode {op:#x}": (frame(op, b"x"), 1002) for op in (3, 4, 5, 6, 7)},
    **{f"reserved control opcode {op:#x}": (frame(op), 1002) for op in (0xB, 0xC, 0xD, 0xE, 0xF)},
    "fragmented ping": (frame(0x9, b"p", fin=False), 1002),
    "fragmented pong": (frame(0xA, b"p", fin=False), 1002),
    "fragmented close": (frame(0x8, close_payload(1000), fin=False), 1002),
    "ping of 126 bytes": (frame(0x9, b"p" * 126), 1002),
    "pong of 126 bytes": (frame(0xA, b"p" * 126), 1002),
    "close of 126 bytes": (frame(0x8, close_payload(1000, "r" * 124)), 1002),
    "close payload of 1 byte": (frame(0x8, b"\x03"), 1002),
    **{
        f"close code {code}": (frame(0x8, close_payload(code)), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    },
    "invalid UTF-8 in a text frame": (frame(0x1, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80"), 1007),
    "overlong UTF-8": (frame(0x1, b"\xc0\xaf"), 1007),
    "invalid UTF-8 across fragments": (
        frame(0x1, b"\xce", fin=False) + frame(0x0, b"\x28"),
        1007,
    ),
    "truncated UTF-8 at the end of a message": (frame(0x1, b"ok\xe2\x82"), 1007),
    "invalid UTF-8 in the close reason": (frame(0x8, close_payload(1000) + b"\xff\xfe"), 1007),
    "continuation without a start": (frame(0x0, b"orphan"), 1002),
    "final continuation without a start": (frame(0x0, b"orphan", fin=True), 1002),
    "text inside a fragmented text": (frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),
    "binary inside a fragmented text": (frame(0x1, b"a", fin=False) + frame(0x2, b"b"), 1002),
    "64-bit length with the MSB set": (
        bytes([0x82]) + long_length(2**63 + 5) + b"\x00\x00\x00\x00",
        1002,
    ),
    "16-bit length for a short payload": (
        bytes([0x81, 0x80 | 126]) + struct.pack("!H", 5) + b"\x00" * 4 + b"hello",
        1002,
    ),
    "64-bit length for a short payload": (
        bytes([0x81]) + long_length(5) + b"\x00" * 4 + b"hello",
        1002,
    ),
    "message over max_message_size": (frame(0x2, b"x" * (2**16 + 1)), 1009),
}


@pytest.mark.parametrize("case", sorted(FRAME_ERRORS))
def test_frame_protocol_error_closes_with_its_code_then_the_transport(
    serve_bytes: Harness, case: str
) -> None:
    data, code = FRAME_ERRORS[case]
    answer = exchange(serve_bytes, upgrade_request("/echo") + data)
    assert closing(answer) == (code, True), case


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1013, 3000, 4999])
def test_a_valid_close_code_is_echoed(serve_bytes: Harness, code: int) -> None:
    close = frame(0x8, close_payload(code, "bye"))
    answer = exchange(serve_bytes, upgrade_request("/echo") + close)
    assert closing(answer) == (code, True)


def test_a_close_without_payload_is_answered_without_a_code(serve_bytes: Harness) -> None:
    answer = exchange(serve_bytes, upgrade_request("/echo") + frame(0x8))
    frames = parse_frames(parse_answer(answer)[1])
    assert [(f.opcode, f.payload) for f in frames] == [(0x8, b"")]


def test_control_frames_between_fragments_and_nothing_after_close(serve_bytes: Harness) -> None:
    data = (
        frame(0x1, b"fra", fin=False)
        + frame(0x9, b"ping")
        + frame(0xA, b"unsolicited pong")
        + frame(0x0, b"gm", fin=False)
        + frame(0x0, b"ent")
        + frame(0x8, close_payload(1000))
        + frame(0x1, b"after the close: ignored")
    )
    answer = exchange(serve_bytes, upgrade_request("/echo") + data)
    frames = parse_frames(parse_answer(answer)[1])
    assert [(f.opcode, f.payload) for f in frames] == [
        (0xA, b"ping"),
        (0x1, b"fragment"),
        (0x8, close_payload(1000)),
    ]


# -- RFC 7692: permessage-deflate ------------------------------------------------------------

DEFLATE = upgrade_request("/deflate", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n")


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def deflated_final(data: bytes) -> bytes:
    """Compressed into a stream that ends with a block with BFINAL set (RFC 7692 7.2.3.3)."""
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)


DEFLATE_ERRORS = {
    "RSV1 on a continuation": (
        frame(0x1, deflated(b"ab"), rsv=4, fin=False) + frame(0x0, b"", rsv=4),
        1002,
    ),
    "RSV1 on a ping": (frame(0x9, b"p", rsv=4), 1002),
    "RSV2 with deflate": (frame(0x1, deflated(b"ab"), rsv=6), 1002),
    "corrupt compressed data": (frame(0x2, b"\x06\x00", rsv=4), 1007),
    "compressed invalid UTF-8": (frame(0x1, deflated(b"\xff\xfe"), rsv=4), 1007),
    "data after the final block": (frame(0x1, deflated_final(b"ab") + b"\x00\x01", rsv=4), 1007),
    "a fragment after the final block": (
        frame(0x1, deflated_final(b"ab"), rsv=4, fin=False) + frame(0x0, deflated(b"cd")),
        1007,
    ),
    "inflates past max_message_size": (frame(0x2, deflated(b"\x00" * (2**16 + 1)), rsv=4), 1009),
}


@pytest.mark.parametrize("case", sorted(DEFLATE_ERRORS))
def test_compressed_frame_error_closes_with_its_code_then_the_transport(
    serve_bytes: Harness, case: str
) -> None:
    data, code = DEFLATE_ERRORS[case]
    answer = exchange(serve_bytes, DEFLATE + data)
    assert header(answer, "Sec-WebSocket-Extensions") == ["permessage-deflate"]
    assert closing(answer) == (code, True), case


def test_compressed_message_echoed_compressed(serve_bytes: Harness) -> None:
    message = b"hello " * 100
    data = frame(0x2, deflated(message), rsv=4) + frame(0x8, close_payload(1000))
    frames = parse_frames(parse_answer(exchange(serve_bytes, DEFLATE + data))[1])
    assert [f.opcode for f in frames] == [0x2, 0x8]
    assert frames[0].rsv == 4 and len(frames[0].payload) < len(message)
    inflater = zlib.decompressobj(wbits=-15)
    assert inflater.decompress(frames[0].payload + b"\x00\x00\xff\xff") == message


def test_messages_after_a_final_block_start_a_new_stream(serve_bytes: Harness) -> None:
    messages = [b"first " * 20, b"second " * 20, b"third " * 20]
    data = b"".join(frame(0x2, deflated_final(m), rsv=4) for m in messages)
    answer = exchange(serve_bytes, DEFLATE + data + frame(0x8, close_payload(1000)))
    frames = parse_frames(parse_answer(answer)[1])
    inflater = zlib.decompressobj(wbits=-15)  # our answers share one stream (context takeover)
    echoed = [inflater.decompress(f.payload + b"\x00\x00\xff\xff") for f in frames[:-1]]
    assert echoed == messages  # each one, not empty messages after the first
    assert frames[-1].opcode == 0x8
