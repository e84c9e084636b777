"""The transport's whole life in the core, in virtual time: the drain deadline after a
connection finished, the shutdown deadline, the abort verdict, the accept back-off."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Coroutine, Generator

import pytest

from spoc_sockets import Connection, ConnectionState, Hub, Request, UsageError
from spoc_sockets._hub import ACCEPT_RETRY
from spoc_sockets.testing import TestClient

from ..frames import upgrade_request
from .wire import Peer, Recorder, frame, router_with

EMFILE = OSError(errno.EMFILE, "Too many open files")


def quiet(**options: object) -> Recorder:
    return Recorder(ping_interval=None, **options)


# -- the drain deadline ---------------------------------------------------------------


def test_a_transport_that_does_not_drain_gets_the_abort_verdict_at_the_drain_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = quiet(close_timeout=1.0)
    with TestClient(router_with("/r", channel), drain_timeout=3.0) as client:
        ws = client.connect("/r")
        server = ws.server
        ws.pause_reading()  # the client's buffer is full from now on
        assert server.connection is not None
        server.connection.close(4000, "bye")
        client.pump()
        client.advance(1.0)  # close_timeout: the core is done with the connection
        assert server.should_close and not server.should_abort
        assert channel.closed == [(4000, "bye")]
        assert client.hub.next_deadline() == 4.0  # finished at 1.0, plus drain_timeout
        client.advance(2.9)
        assert not server.should_abort and ws.close_code is None
        with caplog.at_level(logging.DEBUG, logger="spoc_sockets.core"):
            client.advance(0.1)
        assert server.should_abort
        assert [r.getMessage() for r in caplog.records] == [
            "output to ('127.0.0.1', 50000) not drained in time"
        ]
        assert ws.close_code == 1006  # dropped: the close frame never arrived
        assert client.hub.next_deadline() is None
        assert server.next_deadline() is None
        server.handle_timeout(100.0)  # nothing is left to time out
        assert client.hub.connections == []


def test_a_transport_gone_before_the_drain_deadline_gets_no_verdict() -> None:
    with TestClient(router_with("/r", quiet(close_timeout=1.0)), drain_timeout=3.0) as client:
        ws = client.connect("/r")
        server = ws.server
        ws.pause_reading()
        assert server.connection is not None
        server.connection.close(4000, "bye")
        client.pump()
        client.advance(1.0)
        client.advance(2.0)
        ws.resume_reading()  # the last bytes leave, and the transport closes
        assert ws.close_code == 4000
        assert client.hub.next_deadline() is None
        client.advance(60)
        assert not server.should_abort


def test_the_last_bytes_leave_even_while_writes_are_paused() -> None:
    with TestClient(router_with("/r", quiet(close_timeout=1.0))) as client:
        ws = client.connect("/r")
        ws.pause_reading()
        assert ws.server.connection is not None
        ws.server.connection.send("last words")
        ws.server.connection.close(4000, "bye")
        client.pump()
        client.advance(1.0)
        ws.resume_reading()
        assert ws.receive() == "last words"
        assert ws.close_code == 4000


def test_without_an_adapter_report_a_finished_connection_is_aborted_at_the_drain_deadline() -> None:
    router = router_with("/r", quiet())
    hub = Hub(router, drain_timeout=2.0)
    peer = Peer(router, hub=hub, now=10.0)
    peer.handshake("/r")
    peer.eof()
    assert peer.server.should_close and not peer.server.should_abort
    assert hub.next_deadline() == 12.0
    hub.take_pending()
    peer.advance(2.0)
    assert peer.server.should_abort
    assert peer.server in hub.take_pending()  # the adapter hears the verdict
    assert peer.server.next_deadline() is None  # the verdict is final: nothing left to time
    peer.server.handle_timeout(60.0)
    peer.server.transport_lost(12.0)
    assert hub.next_deadline() is None


def test_a_transport_lost_while_open_finishes_with_1006_and_leaves_nothing_to_wait_for() -> None:
    channel = quiet()
    router = router_with("/r", channel)
    hub = Hub(router)
    peer = Peer(router, hub=hub)
    peer.handshake("/r")
    peer.server.transport_lost(1.0)
    assert channel.closed == [(1006, "")]
    assert peer.server.should_close and not peer.server.should_abort
    assert hub.connections == [] and hub.next_deadline() is None
    hub.shutdown(2.0)
    assert hub.finished


# -- the shutdown deadline ------------------------------------------------------------


def test_the_shutdown_deadline_aborts_what_remains_and_the_hub_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = quiet(close_timeout=60.0)
    with TestClient(router_with("/r", channel), shutdown_timeout=2.0) as client:
        mute = client.connect("/r", answer_pings=False)
        mute.pause_reading()  # never answers the close frame
        polite = client.connect("/r")
        client.shutdown()
        assert polite.close_code == 1001  # answered at once: gone
        assert client.hub.connections == [mute.server]
        assert not client.hub.finished
        assert client.hub.next_deadline() == 2.0  # before the channel's close_timeout
        client.advance(1.9)
        assert not mute.server.should_abort and not client.hub.finished
        with caplog.at_level(logging.WARNING, logger="spoc_sockets.server"):
            client.advance(0.1)
        assert [r.getMessage() for r in caplog.records] == [
            "shutdown_timeout passed: dropping 1 remaining clients"
        ]
        assert mute.server.should_abort
        assert mute.close_code == 1006
        assert client.hub.finished
        assert client.hub.connections == []
        assert sorted(channel.closed) == [(1001, "server shutting down"), (1006, "")]


def test_a_shutdown_with_nothing_left_finishes_before_its_deadline() -> None:
    channel = quiet()
    with TestClient(router_with("/r", channel), shutdown_timeout=2.0) as client:
        ws = client.connect("/r")
        assert not client.hub.finished
        client.shutdown()
        assert ws.close_code == 1001
        assert client.hub.finished
        assert client.hub.next_deadline() is None
        assert channel.closed == [(1001, "server shutting down")]


def test_shutdown_timeout_none_leaves_the_bound_to_close_and_drain_timeouts() -> None:
    channel = quiet(close_timeout=5.0)
    with TestClient(router_with("/r", channel), shutdown_timeout=None, drain_timeout=1.0) as client:
        ws = client.connect("/r")
        ws.pause_reading()
        client.shutdown()
        assert client.hub.next_deadline() == 5.0
        client.advance(5.0)  # close_timeout: finished, now draining
        assert not client.hub.finished and client.hub.next_deadline() == 6.0
        client.advance(1.0)
        assert ws.server.should_abort and client.hub.finished


def test_a_new_handshake_during_the_shutdown_is_refused_with_503() -> None:
    with TestClient(router_with("/r", quiet(close_timeout=60.0))) as client:
        ws = client.connect("/r", answer_pings=False)
        ws.pause_reading()
        client.shutdown()
        late = Peer(client.router, hub=client.hub, now=client.now)
        late.send(b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        assert late.out.startswith(b"HTTP/1.1 503 ")


# -- async hooks at the end -----------------------------------------------------------


class _Spawner:
    """An adapter's ``spawn`` that runs each coroutine until it waits, and resumes it only
    when told (:meth:`finish`): hooks that hang until the test lets them end.

    ``deferred``: a cancel is a request, as an asyncio task's is; the coroutine sees it
    when the test calls :meth:`deliver_cancels`. Otherwise it is closed at once.
    """

    def __init__(self, *, deferred: bool = False) -> None:
        self.deferred = deferred
        self.cancelled: list[Coroutine[object, None, None]] = []
        self.running: list[Coroutine[object, None, None]] = []
        self._to_cancel: list[Coroutine[object, None, None]] = []

    def __call__(self, coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
        self.running.append(coroutine)
        coroutine.send(None)  # runs until it waits

        def cancel() -> None:
            self.cancelled.append(coroutine)
            if self.deferred:
                self._to_cancel.append(coroutine)
            else:
                coroutine.close()

        return cancel

    def finish(self, coroutine: Coroutine[object, None, None]) -> None:
        """Let a waiting hook go on: it ends."""
        with pytest.raises(StopIteration):
            coroutine.send(None)

    def deliver_cancels(self) -> None:
        for coroutine in self._to_cancel:
            coroutine.close()
        self._to_cancel.clear()


class _Never:
    """An awaitable that waits until the spawner resumes it (:meth:`_Spawner.finish`)."""

    def __await__(self) -> Generator[None, None, None]:
        yield


class _SlowGoodbye(Recorder):
    async def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        await _Never()


def test_async_hooks_still_running_after_the_last_transport_get_drain_timeout() -> None:
    router = router_with("/r", _SlowGoodbye(ping_interval=None))
    spawner = _Spawner()
    hub = Hub(router, spawn=spawner, drain_timeout=2.0, shutdown_timeout=None)
    peer = Peer(router, hub=hub)
    peer.handshake("/r")
    peer.eof()
    peer.server.transport_lost(0.0)
    assert len(spawner.running) == 1  # on_close, never ending
    hub.shutdown(0.0)
    assert not hub.finished
    assert hub.next_deadline() == 2.0
    hub.handle_timeouts(1.9)
    assert not hub.finished and spawner.cancelled == []
    hub.handle_timeouts(2.0)
    assert spawner.cancelled == spawner.running
    assert hub.finished
    assert hub.next_deadline() is None


def test_the_shutdown_ends_with_the_last_async_hook_not_the_first() -> None:
    router = router_with("/r", _SlowGoodbye(ping_interval=None))
    spawner = _Spawner()
    woken: list[int] = []
    hub = Hub(
        router, lambda: woken.append(1), spawn=spawner, drain_timeout=2.0, shutdown_timeout=None
    )
    for _ in range(2):
        peer = Peer(router, hub=hub)
        peer.handshake("/r")
        peer.eof()
        peer.server.transport_lost(0.0)
    first, second = spawner.running  # two on_close hooks, both waiting
    hub.shutdown(0.0)
    assert hub.next_deadline() == 2.0
    hub.take_pending()
    woken.clear()
    spawner.finish(first)
    assert not hub.finished and woken == []
    spawner.finish(second)
    assert hub.finished
    assert woken == [1]  # the adapter's close returns now, not at the deadline
    assert hub.next_deadline() is None
    assert spawner.cancelled == []


class _SlowAuthenticate(Recorder):
    async def authenticate(self, request: Request) -> object:
        await _Never()
        return None


def test_an_async_authenticate_cancelled_by_the_shutdown_is_not_waited_for() -> None:
    router = router_with("/r", _SlowAuthenticate(ping_interval=None))
    spawner = _Spawner(deferred=True)  # the hook sees its cancellation later
    woken: list[int] = []
    hub = Hub(router, lambda: woken.append(1), spawn=spawner, drain_timeout=2.0)
    peer = Peer(router, hub=hub)
    peer.send(upgrade_request("/r"))
    assert len(spawner.running) == 1 and peer.out == b""  # deciding
    hub.shutdown(0.0)
    peer.flush()
    assert peer.answer.status == 503
    assert spawner.cancelled == spawner.running
    peer.server.transport_lost(0.5)
    assert hub.finished  # the cancelled hook is the adapter's to wind down
    assert hub.next_deadline() is None
    hub.take_pending()
    woken.clear()
    spawner.deliver_cancels()  # the hook ends: nothing left to tell the adapter
    assert woken == [] and hub.finished


class _SlowReader(Recorder):
    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        self.messages.append(message)
        await _Never()


def test_the_pong_wait_starts_afresh_when_an_async_hook_lets_input_flow_again() -> None:
    router = router_with("/r", _SlowReader(ping_interval=5.0, ping_timeout=10.0))
    spawner = _Spawner()
    hub = Hub(router, spawn=spawner)
    peer = Peer(router, hub=hub)
    peer.handshake("/r")
    peer.advance(5.0)
    assert [f.opcode for f in peer.frames] == [0x9]  # the ping: its pong is due by 15.0
    server = peer.server
    server.receive_data(frame(0x1, b"slow"), 6.0)  # on_message runs: no input meanwhile
    peer.out += server.data_to_send(6.0)
    assert server.input_paused
    hub.handle_timeouts(15.0)  # the pong could not be read: no verdict while it runs
    (hook,) = spawner.running
    spawner.finish(hook)
    peer.out += server.data_to_send(20.0)  # input flows again at 20.0
    assert not server.input_paused
    hub.handle_timeouts(29.9)
    peer.out += server.data_to_send(29.9)
    assert peer.close is None and server.state is ConnectionState.OPEN
    hub.handle_timeouts(30.0)  # ping_timeout after input resumed, and no pong
    peer.out += server.data_to_send(30.0)
    assert peer.close == (1011, "keepalive ping timeout")


# -- accept back-off ------------------------------------------------------------------


def test_out_of_descriptors_with_no_connection_accepting_resumes_at_the_retry_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    woken: list[None] = []
    hub = Hub(router_with("/r", quiet()), lambda: woken.append(None))
    assert hub.accepting
    with caplog.at_level(logging.WARNING, logger="spoc_sockets.server"):
        hub.pause_accepting(10.0, EMFILE)
        hub.pause_accepting(10.1, EMFILE)  # a second listener fails too: one warning
    assert [r.getMessage() for r in caplog.records] == [
        f"accept failed ({EMFILE}): not accepting until a connection closes"
    ]
    assert not hub.accepting
    assert hub.next_deadline() == 10.0 + ACCEPT_RETRY
    hub.take_pending()
    woken.clear()
    hub.handle_timeouts(10.0 + ACCEPT_RETRY - 0.01)
    assert not hub.accepting and woken == []
    hub.handle_timeouts(10.0 + ACCEPT_RETRY)
    assert hub.accepting and woken == [None]
    assert hub.next_deadline() is None


def test_out_of_descriptors_with_connections_accepting_resumes_when_one_is_gone() -> None:
    router = router_with("/r", quiet())
    hub = Hub(router)
    peer = Peer(router, hub=hub)
    peer.handshake("/r")
    hub.pause_accepting(1.0, EMFILE)
    assert not hub.accepting
    assert hub.next_deadline() is None  # no retry: a closing connection frees a descriptor
    peer.eof()
    assert not hub.accepting  # finished, but its descriptor is still held
    peer.server.transport_lost(2.0)
    assert hub.accepting


def test_no_accepting_after_shutdown() -> None:
    hub = Hub(router_with("/r", quiet()))
    hub.shutdown(0.0)
    assert not hub.accepting and hub.finished
    hub.pause_accepting(0.0, EMFILE)
    assert hub.next_deadline() is None


def test_by_default_a_transport_drains_for_5_s_and_a_shutdown_takes_at_most_30_s() -> None:
    router = router_with("/r", quiet(close_timeout=60.0))
    hub = Hub(router)
    assert hub.refusing is False and hub.finished is False and hub.accepting is True
    done, mute = Peer(router, hub=hub, now=1.0), Peer(router, hub=hub, now=1.0)
    done.handshake("/r")
    mute.handshake("/r")
    done.eof()
    assert done.server.next_deadline() == 1.0 + 5.0  # drain_timeout
    hub.shutdown(2.0)  # mute never answers the close frame (close_timeout is 60 s)
    assert hub.refusing is True and hub.finished is False
    done.server.transport_lost(3.0)
    assert hub.next_deadline() == 2.0 + 30.0  # shutdown_timeout
    hub.handle_timeouts(32.0)
    assert mute.server.should_abort
    mute.server.transport_lost(32.0)
    assert hub.finished is True


# -- the options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("drain_timeout", 0),
        ("drain_timeout", -1.0),
        ("drain_timeout", "5"),
        ("drain_timeout", None),
        ("drain_timeout", float("nan")),
        ("shutdown_timeout", 0),
        ("shutdown_timeout", "30"),
        ("shutdown_timeout", [30]),
        ("shutdown_timeout", True),
        ("shutdown_timeout", float("inf")),
    ],
)
def test_bad_lifecycle_options_are_refused_by_name(option: str, value: object) -> None:
    with pytest.raises(UsageError, match=f"^{option} is a positive number") as refused:
        Hub(router_with("/r", quiet()), **{option: value})  # type: ignore[arg-type]
    assert repr(value) in str(refused.value)
    with pytest.raises(UsageError, match=f"^{option} "):
        TestClient(router_with("/r", quiet()), **{option: value})  # type: ignore[arg-type]
