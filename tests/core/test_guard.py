"""The core's guard: an unexpected error inside the core (not in a hook) ends that
connection only, logged with its traceback on ``spoc_sockets.core``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from spoc_sockets import Hub, ServerConnection

from .wire import Echo, Peer, frame, router_with


@pytest.fixture(autouse=True)
def no_internal_errors_in_the_core() -> Iterator[None]:
    """Here the core fails on purpose: the suite-wide check is off for this module."""
    yield


def _break_reading(
    monkeypatch: pytest.MonkeyPatch, server: ServerConnection, error: BaseException
) -> None:
    """Make the core itself fail on ``server``'s next frame (no hook is involved)."""
    reading = ServerConnection._on_frame

    def broken(self: ServerConnection, *args: Any) -> Any:
        if self is server:
            raise error
        return reading(self, *args)

    monkeypatch.setattr(ServerConnection, "_on_frame", broken)


@pytest.mark.parametrize("fast_path", [True, False])
def test_an_error_in_the_core_ends_that_connection_only(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    echo = Echo()
    router = router_with("/echo", echo, fast_path=fast_path)
    hub = Hub(router)
    broken, healthy = Peer(router, hub=hub), Peer(router, hub=hub)
    broken.handshake()
    healthy.handshake()
    _break_reading(monkeypatch, broken.server, RuntimeError("core bug"))
    with caplog.at_level(logging.ERROR, "spoc_sockets.core"):
        broken.send(frame(0x1, b"one") + frame(0x1, b"two"))
    assert broken.server.should_close
    assert broken.frames == []  # its output is dropped with it: no echo, no close frame
    assert echo.closed == [(1011, "internal error")]
    record = next(r for r in caplog.records if r.name == "spoc_sockets.core")
    assert "internal error in the core" in record.getMessage()
    assert record.exc_info is not None and "core bug" in str(record.exc_info[1])
    healthy.send(frame(0x1, b"still here"))
    assert [f.payload for f in healthy.frames] == [b"still here"]


def test_the_core_guard_lets_a_keyboard_interrupt_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peer = Peer(router_with())
    peer.handshake()
    _break_reading(monkeypatch, peer.server, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        peer.send(frame(0x1, b"x"))
