"""ServerConnection: the sans-IO state machine of one transport.

Bytes and time go in, bytes and a verdict come out; it never touches a socket or a clock.

States (:class:`~spoc_sockets.ConnectionState`) and what moves them:

``CONNECTING``
    h11 reads the request head (bounded by ``router.max_request_size``: 431). The
    request is routed (404), validated (405, 426, 400), checked by the channel (403,
    400) and authenticated (``Reject``: its status). A ``Deferred`` decision keeps the
    state until it arrives. The whole phase ends at ``router.handshake_timeout`` (408,
    or 503 for an undecided ``Deferred``). A refusal writes the HTTP answer and goes
    to ``CLOSED``; acceptance writes ``101`` and goes to ``OPEN``.
``OPEN``
    wsproto parses frames (simple ones are decoded by the fast path of ``_fastpath``,
    with the same events); messages are reassembled and passed to ``on_message``.
    Keepalive pings every ``ping_interval``; no pong within ``ping_timeout`` fails
    the connection with 1011. A protocol error fails it (1002, 1007, 1009) and a
    message past ``max_message_size`` closes it with 1009 as soon as the limit is
    crossed.
``CLOSING``
    A close frame was sent; the peer's close frame (or ``close_timeout``) ends it.
    A close frame from the peer while ``OPEN`` is answered and ends it at once.
``CLOSED``
    :attr:`should_close` is true: the adapter writes what :meth:`data_to_send` still
    returns, then closes the transport. Later input is ignored. Opened by a
    :class:`~spoc_sockets.Hub`, the connection drains until the adapter reports
    :meth:`transport_lost`; past the hub's ``drain_timeout`` (or its shutdown deadline)
    :attr:`should_abort` turns true: the adapter drops the transport at once.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterator
from http import HTTPStatus
from typing import Protocol, cast

import h11
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.connection import ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension

from ._deflate import BoundedDeflate, negotiate
from ._endpoint import CLOSED, OPEN, Endpoint, core_logger
from ._fastpath import FrameReader, Progress
from ._handshake import accept_headers, check_head, check_upgrade, is_upgrade
from .channel import Message, Outgoing, Spawn
from .errors import CloseCode, ProtocolError
from .limits import RateWindow
from .request import Request
from .router import Response, Router

__all__ = ["Owner", "ServerConnection", "http_response"]


_PING = struct.Struct("!I")

#: Frames (and other protocol events) one connection may have handled per turn of the
#: adapter's loop; the rest wait, with reading paused, for its next turn.
EVENTS_PER_TURN = 64


def http_response(
    status: int, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]], body: bytes = b""
) -> bytes:
    """The bytes of a complete HTTP/1.1 response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # a status http.HTTPStatus does not name, e.g. Reject(499)
        phrase = "Error" if status >= 400 else "Status"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _refusal(status: int, headers: tuple[tuple[str, str], ...], body: bytes, ctype: str) -> bytes:
    return http_response(
        status,
        (
            *headers,
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ),
        body,
    )


class Reader(Protocol):
    """Where frames are parsed: wsproto's ``Connection``, or a :class:`FrameReader`
    in front of it."""

    def receive_data(self, data: bytes) -> None: ...

    def events(self) -> Iterator[Event | Message]: ...


class Owner(Protocol):
    """What a connection needs of the one that opened it (a :class:`~spoc_sockets.Hub`)."""

    #: runs the coroutine of an ``async def`` hook (``None``: hooks must be plain)
    spawn: Spawn | None
    #: True while shutting down: new handshakes are answered with 503
    refusing: bool
    #: seconds a finished connection's transport may drain before the abort verdict
    drain_timeout: float

    def schedule(self, conn: ServerConnection) -> None:
        """``conn`` has something to flush: wake the adapter."""

    def rearm(self, conn: ServerConnection, deadline: float) -> None:
        """``conn`` needs ``handle_timeout`` at ``deadline``."""

    def finish(self, conn: ServerConnection) -> None:
        """The core finished ``conn``; its transport drains (and may carry a new
        connection)."""

    def forget(self, conn: ServerConnection, now: float) -> None:
        """``conn``'s transport is gone."""


class ServerConnection(Endpoint):
    """The sans-IO state machine of one transport (one TCP or TLS stream).

    An adapter feeds it with :meth:`receive_data` (``b""`` for end of stream) and
    :meth:`handle_timeout`, writes what :meth:`data_to_send` returns, closes the
    transport once :attr:`should_close` is true (drops it once :attr:`should_abort` is),
    and reports :meth:`transport_lost` when it is gone. Output produced from elsewhere (a
    broadcast, a send from another thread) is announced through the :class:`Owner` (the
    :class:`Hub`) that opened the connection; without one, call :meth:`data_to_send`.
    """

    def __init__(
        self,
        router: Router,
        now: float,
        *,
        peer: tuple[str, int] | None = None,
        transport: Hashable | None = None,
        hub: Owner | None = None,
    ) -> None:
        self.peer = peer
        self.transport = transport
        #: the last protocol fault of the peer (for logs), or None
        self.error: ProtocolError | None = None
        self._hub = hub
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=router.max_request_size
        )
        self._received = 0  # bytes of the request head (and what came with it)
        self._head: bytearray | None = bytearray()  # those bytes, until the head is read
        self._key = ""
        self._extension: tuple[BoundedDeflate, str] | None = None
        self._ws: WSConnection | None = None
        self._reader: Reader | None = None  # input: self._ws, or a FrameReader before it
        self._compressed = False
        self._out: list[bytes] = []  # framed pieces for the transport
        self._kept = 0  # how many of them discarding must keep (the 101 response)
        self._paused = False
        self._aborted = False  # the verdict: drop the transport now
        self._lost = False  # the adapter reported the transport gone
        self._events: Iterator[Event | Message] | None = None  # left over from the last turn
        self._first: Message | None = None  # the first fragment of the message being received
        self._rest: bytearray | None = None  # and the others' bytes (UTF-8 for text)
        self._size = 0
        self._fragments = 0
        self._control = RateWindow(now)
        self._ping_payload: bytes | None = None  # the ping awaiting its pong
        self._ping_sent = 0.0
        self._ping_base = 0.0  # when the keepalive interval last started
        self._pings = 0
        super().__init__(router, now, hub.spawn if hub is not None else None)

    # -- what the adapter calls -------------------------------------------------------

    @property
    def should_close(self) -> bool:
        """True once the adapter should close the transport (after writing the output)."""
        return self.state is CLOSED

    @property
    def should_abort(self) -> bool:
        """True once the adapter should drop the transport at once, unwritten output and
        all: the drain deadline or the hub's shutdown deadline passed."""
        return self._aborted

    @property
    def input_paused(self) -> bool:
        """True while input read earlier waits for this connection's next turn (see
        :data:`EVENTS_PER_TURN`) or for an async hook: the adapter stops reading from
        the transport until the connection is pending again and this is false."""
        return self._events is not None or self._busy

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport; ``b""`` means the peer closed its side."""
        if self.state is CLOSED:
            return
        self._clock = now
        with self._guard():
            if self._ws is None:
                self._receive_handshake(data, now)
            else:
                self._receive_frames(data, now)

    def handle_timeout(self, now: float) -> None:
        """Act on a deadline that has passed (a call before it does nothing)."""
        if self.state is not CLOSED:
            super().handle_timeout(now)
        elif self._deadline is not None and now >= self._deadline:
            core_logger.debug("output to %s not drained in time", self.peer)
            self.abort()

    def abort(self) -> None:
        """Give up on the transport: finish (1006) if not finished, and
        :attr:`should_abort` turns true (the hub's deadlines call this)."""
        if self._lost or self._aborted:
            return
        self._finish(CloseCode.ABNORMAL_CLOSURE, "")
        self._aborted = True
        self._deadline = None
        self._out = []
        self._schedule()

    def transport_lost(self, now: float) -> None:
        """The transport is gone (closed, dropped or broken): finish (1006) if not
        finished, and stop waiting for the drain."""
        if self._lost:
            return
        self.receive_data(b"", now)
        self._lost = True
        self._deadline = None
        if self._hub is not None:
            self._hub.forget(self, now)

    def data_to_send(self, now: float) -> bytes:
        """Everything to write now, coalesced; ``b""`` when nothing, or while paused
        (once finished, the last bytes come even then: they are bounded)."""
        self._scheduled = False
        self._clock = now
        with self._guard():
            self._take_decision(now)
            self._take_hook_end(now)
            if self._events is not None and not self._busy:
                self._handle_events(now)
            if self._mailbox:
                self._intake(now)
        if (self._paused and self.state is not CLOSED) or not self._out:
            return b""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._kept = 0
        self._buffered = 0
        return data

    def pause_writing(self) -> None:
        """The transport's buffer is full: keep output here (where the limit applies)."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport drained: output may flow again."""
        self._paused = False
        self._schedule()

    # -- Endpoint: wake-ups, timers, sending ----------------------------------------------

    def _wake(self) -> None:
        if self._hub is not None:
            self._hub.schedule(self)

    def _set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline
        if deadline is not None and self._hub is not None:
            self._hub.rearm(self, deadline)

    def _emit(self, data: bytes) -> None:
        self._out.append(data)
        self._buffered += len(data)
        self._schedule()

    def _send_refusal(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self._emit(_refusal(status, headers, body, "text/plain; charset=utf-8"))

    def _send_accept(self, now: float) -> None:
        extension, offer = self._extension or (None, None)
        self._emit(http_response(101, accept_headers(self._key, self._subprotocol, offer)))
        self._kept = len(self._out)
        extensions: list[Extension] | None = [extension] if extension is not None else None
        self._ws = WSConnection(ConnectionType.SERVER, extensions=extensions)
        self._compressed = extension is not None
        assert self._channel is not None
        self._reader = (
            FrameReader(self._ws, self._channel.max_message_size)
            if self.router.fast_path and not self._compressed
            else self._ws
        )
        self._ping_base = now  # the next ping is due ping_interval after this

    def _send_close(self, code: int, reason: str) -> None:
        assert self._ws is not None
        self._emit(self._ws.send(CloseConnection(code=code, reason=reason)))

    def _discard_output(self) -> None:
        del self._out[self._kept :]  # the 101 response (if not yet taken) always goes out
        self._buffered = sum(map(len, self._out))

    def _ended(self) -> None:
        # free what the connection holds now, whatever keeps the connection object alive
        self._h11 = self._ws = self._reader = self._extension = self._events = self._head = None
        self._first = self._rest = None
        if self._hub is not None and not self._lost:  # drain, bounded by drain_timeout
            self._hub.finish(self)
            self._set_deadline(self._clock + self._hub.drain_timeout)

    # -- CONNECTING ---------------------------------------------------------------------

    def _receive_handshake(self, data: bytes, now: float) -> None:
        assert self._h11 is not None
        if not data:
            self._finish(CloseCode.ABNORMAL_CLOSURE, "")
            return
        self._received += len(data)
        if self._head is not None and len(self._head) <= self.router.max_request_size:
            self._head += data  # the raw head, for check_head (h11 keeps no raw bytes)
        self._h11.receive_data(data)
        if self._deferred is not None:  # early frames wait in h11's buffer, bounded
            if len(self._h11.trailing_data[0]) > self.router.max_request_size:
                self._finish(CloseCode.ABNORMAL_CLOSURE, "")
            return
        try:
            event = self._h11.next_event()
            if isinstance(event, h11.Request):
                # h11 bounds only an incomplete head; one read can bring a complete, huge one
                head = self._received - len(self._h11.trailing_data[0])
                if head > self.router.max_request_size:
                    raise h11.RemoteProtocolError("request head too large", 431)
                assert self._head is not None
                raw, self._head = bytes(self._head[:head]), None
                check_head(raw)
                self._handle_request(event, now)
        except h11.RemoteProtocolError as exc:
            status = 431 if exc.error_status_hint == 431 else 400  # the table's answers only
            self.error = ProtocolError(str(exc), status=status)
            self._refuse(status, (), f"{exc}\n".encode())
        except ProtocolError as exc:
            self.error = exc
            self._refuse_for(exc)

    def _handle_request(self, event: h11.Request, now: float) -> None:
        """Route and validate the request (raising ProtocolError), then decide."""
        assert self._h11 is not None
        if len(event.headers) > self.router.max_headers:
            raise ProtocolError(f"more than {self.router.max_headers} header lines", status=431)
        request = Request.parse(
            event.method.decode("latin-1"),
            event.target.decode("latin-1"),
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers],
            self.peer,
        )
        route = self._resolve(request, self._hub is not None and self._hub.refusing)
        if not is_upgrade(request):
            response = self.router.answer_http(request)
            if response is not None:
                if route is not None and response.status >= 400:  # 405, 426 on a channel
                    self.router.refused(route.path, response.status)
                self._respond(response)
                return
        channel, request = self._routed(route, request)
        self._key = check_upgrade(request, event.http_version.decode())
        self._h11.next_event()  # the EndOfMessage of a bodiless GET
        if channel.compression:
            self._extension = negotiate(request, channel.max_message_size)
        self._decide(channel, request, now)

    def _respond(self, response: Response) -> None:
        body = response.body.encode() if isinstance(response.body, str) else response.body
        self._emit(_refusal(response.status, response.headers, body, response.content_type))
        self._finish(CloseCode.ABNORMAL_CLOSURE, "")

    def _handshake_expired(self) -> None:
        if self._deferred is None and self._received:
            self.error = ProtocolError("request head not received in time", status=408)
            self._refuse(408, (), b"request head not received in time\n")
        else:
            super()._handshake_expired()

    def _accept(self, user: object, now: float) -> None:
        assert self._h11 is not None
        trailing = bytes(self._h11.trailing_data[0])
        self._h11 = None
        super()._accept(user, now)
        if trailing:  # frames that came with the request head
            self._receive_frames(trailing, now)

    # -- OPEN and CLOSING: input ---------------------------------------------------------

    def _receive_frames(self, data: bytes, now: float) -> None:
        reader = self._reader
        assert reader is not None
        if not data:
            self._finish(self._close_code, self._close_reason)
            return
        reader.receive_data(data)
        if self._events is None:
            self._events = reader.events()
        self._handle_events(now)

    def _handle_events(self, now: float) -> None:
        """Handle up to :data:`EVENTS_PER_TURN` events; keep the rest for the next turn."""
        events = self._events
        assert events is not None
        for budget in range(EVENTS_PER_TURN, 0, -1):
            if self._busy:  # an async hook runs: the rest waits until it is done
                return
            event = next(events, None)
            if event is None:
                self._events = None
                return
            self._handle_event(event, now)
            if self.state is CLOSED:
                return
            if self._mailbox:  # replies leave before a later frame can fail or close
                self._intake(now)
            if budget == 1:
                self._schedule()  # more next turn: the adapter pauses reading meanwhile

    def _handle_event(self, event: Event | Message, now: float) -> None:
        kind = type(event)
        if kind is str or kind is bytes:  # a message in one frame, from the fast path
            if self.state is OPEN:
                self._on_frame(event, True, True, now)  # type: ignore[arg-type]
        elif kind is TextMessage or kind is BytesMessage:
            if self.state is OPEN:
                self._on_data(event, now)  # type: ignore[arg-type]
        elif kind is Progress:  # part of a message: the peer is not idle
            if self.state is OPEN:
                self._last_input = now
        elif kind is Ping or kind is Pong:
            if not self._allow_control(now):
                return
            if kind is Pong:
                self._on_pong(event, now)  # type: ignore[arg-type]
            elif self._ws is not None and self._ws.state is WSState.OPEN:
                self._pong(event, now)  # type: ignore[arg-type]
        elif kind is CloseConnection:
            self._on_close_frame(event, now)  # type: ignore[arg-type]

    def _pong(self, ping: Ping, now: float) -> None:
        """Answer a ping; pongs count against ``max_buffered_amount`` like messages do."""
        assert self._ws is not None
        pong = self._ws.send(ping.response())
        if self._overflows(len(pong), now):
            return
        self._emit(pong)

    def _allow_control(self, now: float) -> bool:
        """Count a ping or pong against ``max_control_rate``; past it, close with 1008."""
        assert self._channel is not None
        rate = self._channel.max_control_rate
        if rate is None or self._control.allow(now, rate) or self.state is not OPEN:
            return True
        reason = f"more than {rate:g} control frames per second"
        self.error = ProtocolError(reason, code=CloseCode.POLICY_VIOLATION)
        self._close(CloseCode.POLICY_VIOLATION, reason, now)
        return False

    def _on_data(self, event: TextMessage | BytesMessage, now: float) -> None:
        data: Message = event.data if isinstance(event.data, str) else bytes(event.data)
        self._on_frame(data, event.frame_finished, event.message_finished, now)

    def _on_frame(self, data: Message, frame_finished: bool, finished: bool, now: float) -> None:
        """Data of a message: a whole frame, or part of one (``frame_finished`` false);
        ``finished``: the message's last."""
        if isinstance(data, str):
            self._size += len(data) if data.isascii() else len(data.encode())
        else:
            self._size += len(data)
        self._last_input = now  # a message in progress is not idleness
        if frame_finished:
            self._fragments += 1
        fault = self._over_limits()
        if fault is not None:
            self._first = self._rest = None
            self.error = ProtocolError(fault, code=CloseCode.MESSAGE_TOO_BIG)
            self._close(CloseCode.MESSAGE_TOO_BIG, fault, now)
        elif finished:
            message, size = self._reassemble(data), self._size
            self._size = self._fragments = 0
            self._deliver(message, size, now)
        else:
            self._accumulate(data)

    def _over_limits(self) -> str | None:
        """Why the message being received breaks a limit, or None."""
        assert self._channel is not None
        most = self._channel.max_fragments
        too_big = self._too_big(self._size)
        if too_big is not None:
            return too_big
        if most is not None and self._fragments > most:
            return f"message in over {most} fragments"
        return None

    def _accumulate(self, data: Message) -> None:
        """Keep a fragment: the fragments after the first cost their bytes (text as
        UTF-8), not a Python object each."""
        if self._first is None:
            self._first = data
            return
        if self._rest is None:
            self._rest = bytearray()
        self._rest += data.encode() if isinstance(data, str) else data

    def _reassemble(self, last: Message) -> Message:
        """The whole message, from what was accumulated and its ``last`` fragment."""
        first, rest = self._first, self._rest or b""
        self._first = self._rest = None
        if first is None:
            return last
        if isinstance(first, str):
            return first + rest.decode() + cast("str", last)
        return b"".join((first, rest, cast("bytes", last)))

    def _on_close_frame(self, event: CloseConnection, now: float) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is WSState.OPEN:  # wsproto could not parse: the peer broke the protocol
            code = CloseCode(int(event.code))
            self.error = ProtocolError(event.reason or code.name, code=code)
            self._fail(code, event.reason or "")
        elif ws.state is WSState.REMOTE_CLOSING:  # the peer starts the closing handshake
            if self.state is OPEN:
                self._close_code, self._close_reason = int(event.code), event.reason or ""
            self._emit(ws.send(CloseConnection(code=event.code)))
            self._finish(self._close_code, self._close_reason)
        else:  # the peer answered our close frame
            self._finish(self._close_code, self._close_reason)

    # -- OPEN: output ---------------------------------------------------------------------

    def _queue(self, item: Outgoing, now: float) -> None:
        assert self._ws is not None
        if self._compressed:  # each connection compresses its own copy
            message = item.message
            event = (
                TextMessage(data=message)
                if isinstance(message, str)
                else BytesMessage(data=message)
            )
            self._emit(self._ws.send(event))
        else:  # the shared frame: the same two bytes objects for every recipient
            self._out += (item.header, item.payload)
            self._buffered += item.size

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame and finish."""
        assert self._ws is not None
        if self._ws.state is WSState.OPEN:
            self._emit(self._ws.send(CloseConnection(code=code, reason=reason[:120])))
        if self.state is OPEN:
            self._close_code, self._close_reason = code, reason
        self._finish(self._close_code, self._close_reason)

    # -- keepalive ------------------------------------------------------------------------

    def _keepalive_due(self) -> float | None:
        assert self._channel is not None
        timeout, interval = self._channel.ping_timeout, self._channel.ping_interval
        if self._ping_payload is not None and timeout is not None:
            return self._ping_sent + timeout  # waiting for the pong
        return None if interval is None else self._ping_base + interval

    def _keepalive(self, now: float) -> None:
        channel, ws = self._channel, self._ws
        assert channel is not None and ws is not None
        if self._ping_payload is not None:
            if channel.ping_timeout is not None and now >= self._ping_sent + channel.ping_timeout:
                self.error = ProtocolError(
                    "no pong within ping_timeout", code=CloseCode.INTERNAL_ERROR
                )
                self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        if channel.ping_interval is None or now < self._ping_base + channel.ping_interval:
            return
        self._pings += 1
        payload = _PING.pack(self._pings & 0xFFFFFFFF)
        self._emit(ws.send(Ping(payload=payload)))
        self._ping_sent = self._ping_base = now
        if channel.ping_timeout is not None:
            self._ping_payload = payload

    def _input_resumed(self, now: float) -> None:
        if self._ping_payload is not None:
            self._ping_sent = now  # its pong could not be read meanwhile: wait afresh

    def _on_pong(self, event: Pong, now: float) -> None:
        if self._ping_payload is None or bytes(event.payload) != self._ping_payload:
            return  # unsolicited (allowed by RFC 6455 section 5.5.3), or stale
        self._ping_payload = None
        if self.state is OPEN:
            self._arm_open()  # the next ping is due ping_interval after the last one

    def __repr__(self) -> str:
        return f"<ServerConnection {self.peer} {self.state.value}>"
