"""The hub's single timer: the earliest live deadline of all its connections."""

from __future__ import annotations

from spoc_sockets import Hub

from ..frames import upgrade_request
from .wire import Recorder, router_with


def test_next_deadline_is_the_earliest_live_one() -> None:
    hub = Hub(router_with("/r", Recorder(ping_interval=25.0), handshake_timeout=10.0))
    assert hub.next_deadline() is None
    first = hub.open(0.0)
    second = hub.open(3.0)
    assert hub.next_deadline() == 10.0
    first.receive_data(upgrade_request("/r"), 1.0)  # its handshake deadline is now stale
    assert first.next_deadline() == 26.0
    assert hub.next_deadline() == 13.0
    second.receive_data(b"", 4.0)  # finished: its transport drains, bounded
    assert hub.next_deadline() == 4.0 + hub.drain_timeout
    second.transport_lost(4.5)  # gone: its deadline goes with it
    assert hub.next_deadline() == 26.0
    hub.handle_timeouts(25.9)
    assert hub.next_deadline() == 26.0
    hub.handle_timeouts(26.0)  # the ping goes out; the pong is due by ping_timeout
    assert hub.next_deadline() == 26.0 + 20.0
    first.receive_data(b"", 27.0)
    first.transport_lost(27.0)
    assert hub.next_deadline() is None


def test_a_connection_whose_deadline_ran_is_pending_and_the_adapter_woken_once() -> None:
    woken: list[int] = []
    hub = Hub(router_with("/r", Recorder(ping_interval=5.0)), wakeup=lambda: woken.append(1))
    conn = hub.open(0.0)
    conn.receive_data(upgrade_request("/r"), 0.0)
    assert hub.take_pending() == [conn]
    conn.data_to_send(0.0)
    woken.clear()
    hub.handle_timeouts(5.0)  # the ping is due
    assert woken == [1]
    assert set(hub.take_pending()) == {conn}
    assert conn.data_to_send(5.0)[:1] == b"\x89"  # a ping frame
