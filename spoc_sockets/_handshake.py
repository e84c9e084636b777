"""The server side of the RFC 6455 opening handshake (section 4.2).

:func:`check_upgrade` validates what the request itself must carry, in the order of
the answers table (414 for too many query parameters, 405, 426, 400, 426 for the
version); :func:`check_head` refuses the raw request-head
shapes h11 tolerates; :func:`accept_headers` builds the headers of the ``101 Switching
Protocols`` response.
"""

from __future__ import annotations

import base64
import binascii

from wsproto.utilities import generate_accept_token

from .errors import ProtocolError
from .request import Request

__all__ = [
    "MAX_QUERY_FIELDS",
    "accept_headers",
    "check_head",
    "check_upgrade",
    "is_upgrade",
]

#: The most query parameters (``&``-separated fields) an upgrade request's target may
#: carry (answered 414 beyond), so that reading ``request.query`` stays cheap.
MAX_QUERY_FIELDS = 100


def is_upgrade(request: Request) -> bool:
    """Whether the request asks for a WebSocket (``Upgrade: websocket``)."""
    return "websocket" in request.headers.tokens("upgrade")


def check_head(head: bytes) -> None:
    """Refuse, with 400, the request-head shapes h11 tolerates but RFC 7230 lets a server
    reject, each a request-smuggling vector when a proxy in front reads them otherwise:
    a line ending in a bare LF (section 3.5), a header folded onto the next line
    (obs-fold, section 3.2.4) and a repeated ``Content-Length`` (section 3.3.2).

    ``head`` is the request head as received, up to and including its blank line
    (so every line of it ends in LF). The scans are over the whole head at once; only a
    head that names ``Content-Length`` twice is split into lines.
    """
    if head.count(b"\n") != head.count(b"\r\n"):
        raise ProtocolError("a line of the request head ends in a bare LF, not CRLF", status=400)
    if b"\n " in head or b"\n\t" in head:
        raise ProtocolError("a header is folded onto the next line (obs-fold)", status=400)
    if head.lower().count(b"content-length") > 1 and _lengths(head) > 1:
        raise ProtocolError("the request has more than one Content-Length header", status=400)


def _lengths(head: bytes) -> int:
    """How many ``Content-Length`` header lines ``head`` has."""
    lines = head.split(b"\n")[1:]
    return sum(line.split(b":", 1)[0].lower() == b"content-length" for line in lines)


def check_upgrade(request: Request, http_version: str = "1.1") -> str:
    """Validate a routed upgrade request; return its ``Sec-WebSocket-Key``.

    Raises :class:`ProtocolError` carrying the HTTP status that answers the fault.
    """
    fields = request.target.partition("?")[2].count("&") + 1
    if fields > MAX_QUERY_FIELDS:
        raise ProtocolError(
            f"too many query parameters: {fields}; at most {MAX_QUERY_FIELDS}", status=414
        )
    if request.method != "GET":
        raise ProtocolError(
            f"a WebSocket handshake must use GET, not {request.method}",
            status=405,
            headers=[("Allow", "GET")],
        )
    if not is_upgrade(request):
        raise ProtocolError(
            "this path serves WebSocket connections only (Upgrade: websocket expected)",
            status=426,
            headers=[("Upgrade", "websocket")],
        )
    if http_version != "1.1":
        raise ProtocolError(f"a WebSocket handshake needs HTTP/1.1, not {http_version}", status=400)
    if "upgrade" not in request.headers.tokens("connection"):
        raise ProtocolError("the Connection header must contain 'upgrade'", status=400)
    versions = request.headers.get_all("sec-websocket-version")
    if versions != ["13"]:
        raise ProtocolError(
            f"unsupported Sec-WebSocket-Version {', '.join(versions) or '(missing)'}; 13 expected",
            status=426,
            headers=[("Sec-WebSocket-Version", "13")],
        )
    keys = request.headers.get_all("sec-websocket-key")
    if len(keys) != 1 or not _is_valid_key(keys[0]):
        raise ProtocolError(
            "Sec-WebSocket-Key must be one base64-encoded 16-byte value", status=400
        )
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        raise ProtocolError("a WebSocket handshake request has no body", status=400)
    return keys[0]


def _is_valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def accept_headers(
    key: str, subprotocol: str | None, extension: str | None
) -> list[tuple[str, str]]:
    """The headers of the 101 response that accepts the handshake of ``key``."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key.strip().encode()).decode()),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extension is not None:
        headers.append(("Sec-WebSocket-Extensions", extension))
    return headers
