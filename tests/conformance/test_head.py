"""``handshake.check_head``: the raw request-head shapes refused with 400."""

from __future__ import annotations

import pytest

from spoc_sockets._handshake import check_head
from spoc_sockets.errors import ProtocolError

from ..frames import upgrade_request

GOOD = upgrade_request("/echo")


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (GOOD.replace(b"\r\n", b"\n"), "bare LF"),
        (GOOD.replace(b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\n"), "bare LF"),
        (GOOD[:-2] + b"\n", "bare LF"),  # the blank line alone
        (upgrade_request("/echo", extra="X-A: 1\r\n 2\r\n"), "obs-fold"),
        (upgrade_request("/echo", extra="X-A: 1\r\n\t2\r\n"), "obs-fold"),
        (upgrade_request("/echo", extra="Content-Length: 0\r\ncontent-length: 0\r\n"), "more"),
    ],
)
def test_smuggling_shapes_are_400(head: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why) as refused:
        check_head(head)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    "head",
    [
        GOOD,
        upgrade_request("/echo", extra="Content-Length: 0\r\nX-Content-Length: 1\r\n"),
        upgrade_request("/echo", extra="X-A: a b\t c\r\n"),  # whitespace inside a value
    ],
)
def test_well_formed_heads_pass(head: bytes) -> None:
    check_head(head)
