"""The per-address limits at byte level, with the answers a client reads: the handshake
rate (429 with Retry-After) and its memory, the open connections per address, a full
channel (503)."""

from __future__ import annotations

import pytest

from spoc_sockets import ChannelServer, Hub, Router, UsageError

from ..frames import upgrade_request
from .wire import Answer, Recorder, parse_answer


def handshake(hub: Hub, address: str, now: float, path: str = "/r") -> Answer:
    server = hub.open(now, peer=(address, 40000))
    server.receive_data(upgrade_request(path), now)
    return parse_answer(server.data_to_send(now))[0]


def test_past_the_handshake_rate_429_says_when_to_retry() -> None:
    router = Router(max_handshake_rate=0.5)  # 5 per 10-second window and address
    router.add("/r", Recorder())
    hub = Hub(router)
    for n in range(5):
        assert handshake(hub, "10.0.0.1", 100.0 + n).status == 101
    refused = handshake(hub, "10.0.0.1", 106.5)
    assert (refused.status, refused.body) == (429, b"too many handshakes")
    assert refused.header("Retry-After") == "4"  # the window ends at 110
    assert handshake(hub, "10.0.0.2", 106.5).status == 101  # per address
    assert handshake(hub, "10.0.0.1", 110.0).status == 101  # a new window


def test_retry_after_is_one_second_in_the_last_second_of_the_window() -> None:
    router = Router(max_handshake_rate=0.1)  # 1 per window and address
    router.add("/r", Recorder())
    hub = Hub(router)
    assert handshake(hub, "10.0.0.1", 100.0).status == 101
    assert handshake(hub, "10.0.0.1", 109.5).header("Retry-After") == "1"  # ends at 110
    assert handshake(hub, "10.0.0.1", 108.9).header("Retry-After") == "2"


def test_the_rate_is_remembered_while_many_other_addresses_come_and_go() -> None:
    router = Router(max_handshake_rate=0.1)  # 1 per window and address
    router.add("/r", Recorder())
    hub = Hub(router)
    assert handshake(hub, "10.0.0.1", 1000.0).status == 101
    for n in range(3000):  # old windows are forgotten, the running one is not
        handshake(hub, f"10.1.{n // 250}.{n % 250}", 1000.0 + n * 0.002)
    assert handshake(hub, "10.0.0.1", 1009.0).status == 429
    assert handshake(hub, "10.0.0.1", 1010.0).status == 101


def test_open_connections_per_address_and_per_channel() -> None:
    router = Router(max_connections_per_address=2)
    router.add("/r", Recorder())
    router.add("/small", Recorder(max_connections=1))
    hub = Hub(router)
    assert handshake(hub, "10.0.0.1", 0.0).status == 101
    assert handshake(hub, "10.0.0.1", 0.0).status == 101
    refused = handshake(hub, "10.0.0.1", 0.0)
    assert (refused.status, refused.body) == (429, b"too many connections from this address")
    assert handshake(hub, "10.0.0.2", 0.0, "/small").status == 101
    full = handshake(hub, "10.0.0.3", 0.0, "/small")
    assert (full.status, full.body, full.header("Retry-After")) == (
        503,
        b"this channel is full",
        "10",
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x" * 78, repr("x" * 78)),  # 80 characters: shown whole
        ("x" * 79, repr("x" * 79)[:77] + "..."),  # 81: cut to 80 with the dots
    ],
    ids=["80-characters", "81-characters"],
)
def test_a_bad_value_is_shown_whole_up_to_80_characters(value: str, shown: str) -> None:
    with pytest.raises(UsageError) as error:
        ChannelServer(close_timeout=value)  # type: ignore[arg-type]
    assert str(error.value) == f"close_timeout is a positive number, not {shown}"
