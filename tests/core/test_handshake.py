"""The opening handshake's own checks, byte for byte on one in-memory connection: the
request-head shapes refused before the request is read (bare LF, obs-fold, a repeated
``Content-Length``), each fault of an upgrade request, and the heads just inside each
rule, which must be accepted. A refusal is read whole: its status, its head, its body,
and the fault the connection keeps (``ServerConnection.error``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from spoc_sockets._handshake import MAX_QUERY_FIELDS

from ..frames import KEY, upgrade_request
from .wire import Peer, router_with

REQUEST = upgrade_request("/echo")
HOST = b"Host: 127.0.0.1\r\n"


@dataclass(frozen=True)
class Refusal:
    status: int
    headers: list[str]  # the head's lines after the status line, as written
    body: bytes
    error: tuple[str, int | None, tuple[tuple[str, str], ...]] | None  # what, status, headers


def refusal(request: bytes) -> Refusal:
    peer = Peer(router_with())
    peer.send(request)
    head, _, body = bytes(peer.out).partition(b"\r\n\r\n")
    status_line, *headers = head.decode("latin-1").split("\r\n")
    error = peer.server.error
    return Refusal(
        int(status_line.split()[1]),
        headers,
        body,
        None if error is None else (str(error), error.status, error.headers),
    )


def plain(body: str) -> list[str]:
    """The head of a refusal with ``body`` and no header of its own."""
    return [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body) + 1}",
        "Connection: close",
    ]


def assert_refused(
    request: bytes, status: int, text: str, *headers: tuple[str, str], upgrade: bool = True
) -> None:
    """Refused with ``status``, ``text`` and ``headers``; a fault kept when the request
    asked for an upgrade (a plain request is answered as the router answers HTTP)."""
    answer = refusal(request)
    assert answer.status == status
    assert answer.body == f"{text}\n".encode()
    assert answer.error == ((text, status, headers) if upgrade else None)
    assert answer.headers == [f"{name}: {value}" for name, value in headers] + plain(text)


def assert_accepted(request: bytes) -> None:
    peer = Peer(router_with())
    peer.send(request)
    assert peer.answer.status == 101, peer.answer
    assert peer.server.error is None


# -- the raw head ------------------------------------------------------------------------------

BARE_LF = "a line of the request head ends in a bare LF, not CRLF"
OBS_FOLD = "a header is folded onto the next line (obs-fold)"
TWO_LENGTHS = "the request has more than one Content-Length header"


@pytest.mark.parametrize(
    "request_bytes",
    [
        REQUEST.replace(b"\r\n", b"\n"),
        REQUEST.replace(HOST, b"Host: 127.0.0.1\n"),
        REQUEST[:-2] + b"\n",  # the blank line alone
    ],
)
def test_a_line_ending_in_a_bare_lf_is_400(request_bytes: bytes) -> None:
    assert_refused(request_bytes, 400, BARE_LF)


@pytest.mark.parametrize("fold", [" ", "\t"])
def test_a_folded_header_is_400(fold: str) -> None:
    assert_refused(upgrade_request("/echo", extra=f"X-A: 1\r\n{fold}2\r\n"), 400, OBS_FOLD)


@pytest.mark.parametrize(
    "lengths",
    [
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "Content-Length: 0\r\ncontent-length: 0\r\n",  # names fold
        "Content-Length: 0\r\nX-A: 1\r\nCONTENT-LENGTH: 0\r\n",
    ],
)
def test_a_repeated_content_length_is_400(lengths: str) -> None:
    assert_refused(upgrade_request("/echo", extra=lengths), 400, TWO_LENGTHS)


def test_a_repeated_content_length_on_the_first_header_line_is_400() -> None:
    request = b"GET /echo HTTP/1.1\r\nContent-Length: 0\r\n" + REQUEST.partition(b"\r\n")[2]
    request = request.replace(HOST, HOST + b"Content-Length: 0\r\n")
    assert_refused(request, 400, TWO_LENGTHS)


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: 0\r\n",
        "Content-Length: 0\r\nX-Content-Length: 1\r\n",  # another header's name
        "X-A: content-length: 1\r\nContent-Length: 0\r\n",  # in another header's value
        "X-A: content-length:1\r\nContent-Length: 0\r\n",
        "X-A: a b\t c\r\n",  # blanks inside a value are no fold
    ],
)
def test_a_head_that_only_mentions_content_length_or_has_blanks_is_accepted(extra: str) -> None:
    assert_accepted(upgrade_request("/echo", extra=extra))


@pytest.mark.parametrize(
    ("shape", "text"),
    [
        (REQUEST.replace(HOST, b"Host: 127.0.0.1\n"), BARE_LF),
        (upgrade_request("/echo", extra="X-A: 1\r\n 2\r\n"), OBS_FOLD),
        (upgrade_request("/echo", extra="Content-Length: 0\r\nContent-Length: 0\r\n"), TWO_LENGTHS),
    ],
    ids=["bare-lf", "obs-fold", "two-lengths"],
)
def test_a_head_in_pieces_is_checked_whole(shape: bytes, text: str) -> None:
    """Wherever the reads cut the head, the check sees all of it (not the last read's
    bytes, nor as many bytes as the last read brought)."""
    for cut in range(1, len(shape)):
        peer = Peer(router_with())
        peer.send(shape[:cut])
        peer.send(shape[cut:])
        assert (peer.answer.status, peer.server.error and str(peer.server.error)) == (400, text)


# -- the upgrade request -----------------------------------------------------------------------


def query(fields: int) -> str:
    return "/echo?" + "&".join(f"f{i}=1" for i in range(fields))


def test_a_target_with_too_many_query_fields_is_414() -> None:
    fields = MAX_QUERY_FIELDS + 1
    text = f"too many query parameters: {fields}; at most {MAX_QUERY_FIELDS}"
    assert_refused(upgrade_request(query(fields)), 414, text)
    # a "?" inside the query is part of it: every field after the first "?" counts
    assert_refused(upgrade_request(query(fields) + "?x"), 414, text)


def test_a_target_with_the_most_query_fields_is_accepted() -> None:
    assert MAX_QUERY_FIELDS == 100
    assert_accepted(upgrade_request(query(MAX_QUERY_FIELDS)))
    assert_accepted(upgrade_request("/echo?" + "a=1?b=2&" * (MAX_QUERY_FIELDS - 1) + "c"))


def test_a_method_other_than_get_is_405_naming_get() -> None:
    text = "a WebSocket handshake must use GET, not POST"
    assert_refused(upgrade_request("/echo", method="POST"), 405, text, ("Allow", "GET"))


def test_a_request_without_upgrade_websocket_is_426_naming_it() -> None:
    text = "this path serves WebSocket connections only (Upgrade: websocket expected)"
    request = upgrade_request("/echo", upgrade="", extra="Connection: Upgrade\r\n")
    answer = ("Upgrade", "websocket")
    assert_refused(request, 426, text, answer, upgrade=False)
    assert_refused(upgrade_request("/echo", upgrade="h2c"), 426, text, answer, upgrade=False)


def test_upgrade_and_connection_tokens_are_read_in_any_case() -> None:
    assert_accepted(REQUEST.replace(b"Upgrade: websocket", b"Upgrade: WebSocket"))
    assert_accepted(REQUEST.replace(b"Connection: Upgrade", b"Connection: keep-alive, UPGRADE"))


def test_http_1_0_is_400() -> None:
    text = "a WebSocket handshake needs HTTP/1.1, not 1.0"
    assert_refused(upgrade_request("/echo", http="1.0"), 400, text)


def test_a_connection_header_without_upgrade_is_400() -> None:
    request = REQUEST.replace(b"Connection: Upgrade", b"Connection: keep-alive")
    assert_refused(request, 400, "the Connection header must contain 'upgrade'")


@pytest.mark.parametrize(
    ("request_bytes", "named"),
    [
        (upgrade_request("/echo", version="8"), "8"),
        (upgrade_request("/echo", version=""), "(missing)"),
        (upgrade_request("/echo", version="8", extra="Sec-WebSocket-Version: 13\r\n"), "8, 13"),
        (upgrade_request("/echo", extra="Sec-WebSocket-Version: 13\r\n"), "13, 13"),
    ],
)
def test_a_version_other_than_13_alone_is_426_naming_13(request_bytes: bytes, named: str) -> None:
    text = f"unsupported Sec-WebSocket-Version {named}; 13 expected"
    assert_refused(request_bytes, 426, text, ("Sec-WebSocket-Version", "13"))


BAD_KEY = "Sec-WebSocket-Key must be one base64-encoded 16-byte value"


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade_request("/echo", key=None),
        upgrade_request("/echo", extra=f"Sec-WebSocket-Key: {KEY}\r\n"),  # two valid keys
        upgrade_request("/echo", key="!!!!not-base64!!!!!!!!=="),
        upgrade_request("/echo", key="MDEyMzQ1Njc4OWFiY2Rl"),  # 15 bytes
        upgrade_request("/echo", key="MDEyMzQ1Njc4OWFiY2RlZmc="),  # 17 bytes
    ],
)
def test_a_missing_repeated_or_malformed_key_is_400(request_bytes: bytes) -> None:
    assert_refused(request_bytes, 400, BAD_KEY)


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: 2\r\n",
        "Transfer-Encoding: chunked\r\n",
        "transfer-encoding: chunked\r\n",
    ],
)
def test_a_handshake_with_a_body_is_400(extra: str) -> None:
    body = b"hi" if "Length" in extra else b""
    assert_refused(
        upgrade_request("/echo", extra=extra) + body,
        400,
        "a WebSocket handshake request has no body",
    )
