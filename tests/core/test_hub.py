"""The hub's single timer: the earliest live deadline of all its connections."""

from __future__ import annotations

from spoc_sockets import Hub
from spoc_sockets._hub import ACCEPT_RETRY

from ..frames import upgrade_request
from .wire import Peer, Recorder, router_with


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


def test_a_deadline_no_earlier_than_the_one_followed_does_not_wake_the_adapter() -> None:
    woken: list[int] = []
    hub = Hub(router_with("/r", Recorder(), handshake_timeout=10.0), wakeup=lambda: woken.append(1))
    hub.open(0.0)
    assert woken == [1]  # a first deadline: the adapter sets its timer
    hub.take_pending()
    woken.clear()
    hub.open(0.0)  # the same deadline, 10.0
    hub.open(1.0)  # a later one, 11.0
    assert woken == []
    assert hub.next_deadline() == 10.0
    hub.take_pending()
    hub.open(2.0, transport="t")
    assert woken == []
    hub.open(-1.0)  # an earlier one, 9.0: the adapter must set its timer again
    assert woken == [1]
    assert hub.next_deadline() == 9.0


def test_a_gone_transport_wakes_the_adapter_only_when_accepting_resumes() -> None:
    woken: list[int] = []
    router = router_with("/r", Recorder(ping_interval=None))
    hub = Hub(router, wakeup=lambda: woken.append(1))
    peers = [Peer(router, hub=hub) for _ in range(2)]
    for peer in peers:
        peer.handshake("/r")
        peer.eof()  # finished: the transport drains
    hub.take_pending()
    woken.clear()
    peers[0].server.transport_lost(1.0)  # accepting already: nothing to do
    assert woken == [] and hub.take_pending() == []
    hub.pause_accepting(1.0, OSError(24, "Too many open files"))
    assert not hub.accepting and woken == []
    peers[1].server.transport_lost(2.0)  # a descriptor is free: accept again
    assert hub.accepting and woken == [1]


def test_running_out_of_descriptors_after_a_deadline_was_reported_sets_the_retry() -> None:
    woken: list[int] = []
    router = router_with("/r", Recorder(), handshake_timeout=10.0)
    hub = Hub(router, wakeup=lambda: woken.append(1))
    conn = hub.open(0.0)
    assert hub.next_deadline() == 10.0
    conn.transport_lost(1.0)  # no connection left to free a descriptor
    hub.take_pending()
    woken.clear()
    hub.pause_accepting(1.0, OSError(24, "Too many open files"))
    assert woken == [1]  # the retry comes before the timer the adapter follows
    assert hub.next_deadline() == 1.0 + ACCEPT_RETRY
    hub.handle_timeouts(1.0 + ACCEPT_RETRY)
    assert hub.accepting


def test_a_live_deadline_outlasts_many_short_connections() -> None:
    router = router_with("/r", Recorder(ping_interval=25.0), handshake_timeout=10.0)
    hub = Hub(router)
    live = Peer(router, hub=hub)
    live.handshake("/r")
    assert hub.next_deadline() == 25.0
    for _ in range(200):  # each leaves stale timer entries behind: the hub sheds them
        hub.open(1.0).transport_lost(1.0)
    assert hub.next_deadline() == 25.0
    live.advance(25.0)
    assert [f.opcode for f in live.frames] == [0x9]  # the ping went out on time
