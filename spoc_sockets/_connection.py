"""ServerConnection: the sans-IO state machine of one transport.

Bytes and time go in, bytes and a verdict come out; it never touches a socket or a clock.
Every decision about the connection (routing, authentication, limits, overflow, hooks,
the close and the end) is its :class:`~spoc_sockets._session.Session`'s; this module
owns what only bytes have, as that session's byte wire: the request head (h11), the
frames (wsproto) and their limits as bytes arrive, the keepalive, flow control, and
once finished the drain deadline and the abort verdict.

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
from ._fastpath import FrameReader, Progress
from ._handshake import accept_headers, check_head, check_upgrade, is_upgrade
from ._session import CLOSED, OPEN, Session, core_logger
from .channel import Connection, ConnectionState, Message, Outgoing, Spawn
from .errors import CloseCode, ProtocolError
from .limits import RateWindow
from .request import Request
from .router import Response, Router

__all__ = ["Owner", "ServerConnection", "http_response"]


_PING = struct.Struct("!I")

#: Frames (and other protocol events) one connection may have handled per turn of the
#: adapter's loop; the rest wait, with reading paused, for its next turn.
EVENTS_PER_TURN = 64
#: The reason phrase of every status :class:`http.HTTPStatus` names.
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
#: :meth:`ServerConnection.buffers_to_send` gives output pieces of this many bytes or more
#: as they are (a large payload is never copied) and joins the smaller ones between them.
JOIN_BELOW = 16384


def _coalesced(pieces: list[bytes]) -> list[bytes]:
    """``pieces`` with every run of pieces smaller than :data:`JOIN_BELOW` joined."""
    out: list[bytes] = []
    run: list[bytes] = []
    for piece in pieces:
        if len(piece) < JOIN_BELOW:
            run.append(piece)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(piece)
    if run:
        out.append(b"".join(run))
    return out


def _decoded(request: h11.Request) -> list[tuple[str, str]]:
    """The request's headers as text: lower-cased names (as h11 gives them), values as
    received.

    ``raw_items`` is a plain list: cheaper to walk than the ``Sequence`` h11 exposes.
    """
    return [
        (name.lower().decode("latin-1"), value.decode("latin-1"))
        for name, value in request.headers.raw_items()
    ]


def http_response(
    status: int, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]], body: bytes = b""
) -> bytes:
    """The bytes of a complete HTTP/1.1 response."""
    phrase = _PHRASES.get(status)
    if phrase is None:  # a status http.HTTPStatus does not name, e.g. Reject(499)
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


class ServerConnection:
    """The sans-IO state machine of one transport (one TCP or TLS stream).

    An adapter feeds it with :meth:`receive_data` (``b""`` for end of stream) and
    :meth:`handle_timeout`, writes what :meth:`data_to_send` returns, closes the
    transport once :attr:`should_close` is true (drops it once :attr:`should_abort` is),
    and reports :meth:`transport_lost` when it is gone. Output produced from elsewhere (a
    broadcast, a send from another thread) is announced through the :class:`Owner` (the
    :class:`Hub`) that opened the connection; without one, call :meth:`data_to_send`.

    It holds a :class:`~spoc_sockets._session.Session`, which makes every decision, and
    is that session's byte :class:`~spoc_sockets._session.Wire`: h11 reads the request
    head, wsproto the frames; the keepalive, flow control and the drain are its own.
    """

    # one per connection: no instance dictionary (about 1.4 KiB each); weak references kept
    __slots__ = (
        "__weakref__",
        "_aborted",
        "_compressed",
        "_control",
        "_drain_at",
        "_early",
        "_events",
        "_extension",
        "_first",
        "_fragments",
        "_h11",
        "_head",
        "_hub",
        "_kept",
        "_key",
        "_lost",
        "_out",
        "_paused",
        "_ping_base",
        "_ping_payload",
        "_ping_sent",
        "_pings",
        "_reader",
        "_received",
        "_rest",
        "_size",
        "_ws",
        "buffered",
        "peer",
        "router",
        "session",
        "transport",
    )

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
        self.router = router
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
        #: bytes of ``_out`` (the session's ``buffered_amount`` adds its mailbox's)
        self.buffered = 0
        self._paused = False
        self._aborted = False  # the verdict: drop the transport now
        self._lost = False  # the adapter reported the transport gone
        self._drain_at: float | None = None  # once finished: the abort verdict's deadline
        self._early = b""  # frames that came with the request head
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
        #: the decisions: routing, authentication, limits, hooks, the close and the end
        self.session = Session(
            router, now, self, peer=peer, spawn=hub.spawn if hub is not None else None
        )

    # -- what the adapter and the hub read --------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """Where this connection is in its life."""
        return self.session.state

    @property
    def connection(self) -> Connection | None:
        """The application's handle, once accepted (``None`` again once closed)."""
        return self.session.connection

    @property
    def error(self) -> ProtocolError | None:
        """The last protocol fault of the peer (for logs), or None."""
        return self.session.error

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for the peer (see :attr:`Connection.buffered_amount`)."""
        return self.session.buffered_amount

    def shutdown(self) -> None:
        """The server is stopping: close 1001 when open, 503 or drop when connecting."""
        self.session.shutdown()

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must be called next, or None."""
        if self.session.state is CLOSED:
            return self._drain_at
        return self.session.next_deadline()

    # -- what the adapter calls -------------------------------------------------------

    @property
    def should_close(self) -> bool:
        """True once the adapter should close the transport (after writing the output)."""
        return self.session.state is CLOSED

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
        return self._events is not None or self.session.busy

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport; ``b""`` means the peer closed its side."""
        session = self.session
        if session.state is CLOSED:
            return
        session.clock = now
        with session.guard:
            if self._ws is None:
                self._receive_handshake(data, now)
            else:
                self._receive_frames(data, now)

    def handle_timeout(self, now: float) -> None:
        """Act on a deadline that has passed (a call before it does nothing)."""
        if self.session.state is not CLOSED:
            self.session.handle_timeout(now)
        elif self._drain_at is not None and now >= self._drain_at:
            core_logger.debug("output to %s not drained in time", self.peer)
            self.abort()

    def abort(self) -> None:
        """Give up on the transport: finish (1006) if not finished, and
        :attr:`should_abort` turns true (the hub's deadlines call this)."""
        if self._lost or self._aborted:
            return
        self.session.finish(CloseCode.ABNORMAL_CLOSURE, "")
        self._aborted = True
        self._drain_at = None
        self._out = []
        self.session.schedule()

    def transport_lost(self, now: float) -> None:
        """The transport is gone (closed, dropped or broken): finish (1006) if not
        finished, and stop waiting for the drain."""
        if self._lost:
            return
        self.receive_data(b"", now)
        self._lost = True
        self._drain_at = None
        if self._hub is not None:
            self._hub.forget(self, now)

    def data_to_send(self, now: float) -> bytes:
        """Everything to write now, coalesced; ``b""`` when nothing, or while paused
        (once finished, the last bytes come even then: they are bounded)."""
        out = self._take_output(now)
        return out[0] if len(out) == 1 else b"".join(out)

    def buffers_to_send(self, now: float) -> list[bytes]:
        """What :meth:`data_to_send` gives, as buffers for a vectored write (``sendmsg``,
        ``writelines``): a payload of :data:`JOIN_BELOW` bytes or more comes as it is,
        never copied, and the smaller pieces between are joined; ``[]`` when nothing."""
        out = self._take_output(now)
        if len(out) > 1:
            out = _coalesced(out)
        return out

    def _take_output(self, now: float) -> list[bytes]:
        """Run this connection's turn; the pieces to write now, taken."""
        session = self.session
        with session.guard:
            session.begin_turn(now)
            if self._events is not None and not session.busy:
                self._handle_events(now)
            if session.mailbox:
                session.intake(now)
        if (self._paused and session.state is not CLOSED) or not self._out:
            return []
        out = self._out
        self._out = []
        self._kept = 0
        self.buffered = 0
        return out

    def pause_writing(self) -> None:
        """The transport's buffer is full: keep output here (where the limit applies)."""
        self._paused = True

    def resume_writing(self) -> None:
        """The transport drained: output may flow again."""
        self._paused = False
        self.session.schedule()

    # -- the session's Wire: wake-ups, timers, sending ------------------------------------

    def wake(self) -> None:
        if self._hub is not None:
            self._hub.schedule(self)

    def follow(self, deadline: float) -> None:
        if self._hub is not None:
            self._hub.rearm(self, deadline)

    def _emit(self, data: bytes) -> None:
        self._out.append(data)
        self.buffered += len(data)
        self.session.schedule()

    def send_refusal(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self._emit(_refusal(status, headers, body, "text/plain; charset=utf-8"))

    def send_accept(self, subprotocol: str | None, now: float) -> None:
        assert self._h11 is not None
        self._early = bytes(self._h11.trailing_data[0])
        self._h11 = None
        extension, offer = self._extension or (None, None)
        self._emit(http_response(101, accept_headers(self._key, subprotocol, offer)))
        self._kept = len(self._out)
        extensions: list[Extension] | None = [extension] if extension is not None else None
        self._ws = WSConnection(ConnectionType.SERVER, extensions=extensions)
        self._compressed = extension is not None
        channel = self.session.channel
        assert channel is not None
        self._reader = (
            FrameReader(self._ws, channel.max_message_size)
            if self.router.fast_path and not self._compressed
            else self._ws
        )
        self._ping_base = now  # the next ping is due ping_interval after this

    def opened(self, now: float) -> None:
        early, self._early = self._early, b""
        if early and self._ws is not None:  # frames that came with the request head
            self._receive_frames(early, now)

    def send_close(self, code: int, reason: str) -> None:
        assert self._ws is not None
        self._emit(self._ws.send(CloseConnection(code=code, reason=reason)))

    def discard_output(self) -> None:
        del self._out[self._kept :]  # the 101 response (if not yet taken) always goes out
        self.buffered = sum(map(len, self._out))

    def head_incomplete(self) -> bool:
        return self._received > 0 and self._ws is None

    def ended(self, now: float) -> None:
        # free what the connection holds now, whatever keeps the connection object alive
        self._h11 = self._ws = self._reader = self._extension = self._events = self._head = None
        self._first = self._rest = None
        if self._hub is not None and not self._lost:  # drain, bounded by drain_timeout
            self._hub.finish(self)
            self._drain_at = now + self._hub.drain_timeout
            self._hub.rearm(self, self._drain_at)

    # -- CONNECTING ---------------------------------------------------------------------

    def _receive_handshake(self, data: bytes, now: float) -> None:
        assert self._h11 is not None
        if not data:
            self.session.finish(CloseCode.ABNORMAL_CLOSURE, "")
            return
        self._received += len(data)
        if self._head is not None and len(self._head) <= self.router.max_request_size:
            self._head += data  # the raw head, for check_head (h11 keeps no raw bytes)
        self._h11.receive_data(data)
        if self.session.deciding:  # early frames wait in h11's buffer, bounded
            if len(self._h11.trailing_data[0]) > self.router.max_request_size:
                self.session.finish(CloseCode.ABNORMAL_CLOSURE, "")
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
            self.session.error = ProtocolError(str(exc), status=status)
            self.session.refuse(status, (), f"{exc}\n".encode())
        except ProtocolError as exc:
            self.session.error = exc
            self.session.refuse_for(exc)

    def _handle_request(self, event: h11.Request, now: float) -> None:
        """Route and validate the request (raising ProtocolError), then decide."""
        if len(event.headers) > self.router.max_headers:
            raise ProtocolError(f"more than {self.router.max_headers} header lines", status=431)
        request = Request.parse(
            event.method.decode("latin-1"),
            event.target.decode("latin-1"),
            _decoded(event),
            self.peer,
        )
        route = self.session.resolve(request, self._hub is not None and self._hub.refusing)
        if not is_upgrade(request):
            response = self.router.answer_http(request)
            if response is not None:
                if route is not None and response.status >= 400:  # 405, 426 on a channel
                    self.router.refused(route.path, response.status)
                self._respond(response)
                return
        channel, request = self.session.routed(route, request)
        # the request has no body: h11's EndOfMessage is not read (h11 is dropped on
        # acceptance; what follows the head stays in its buffer, as early frames)
        self._key = check_upgrade(request, event.http_version.decode())
        if channel.compression:
            self._extension = negotiate(request, channel.max_message_size)
        self.session.decide(channel, request, now)

    def _respond(self, response: Response) -> None:
        body = response.body.encode() if isinstance(response.body, str) else response.body
        self._emit(_refusal(response.status, response.headers, body, response.content_type))
        self.session.finish(CloseCode.ABNORMAL_CLOSURE, "")

    # -- OPEN and CLOSING: input ---------------------------------------------------------

    def _receive_frames(self, data: bytes, now: float) -> None:
        reader = self._reader
        assert reader is not None
        if not data:
            self.session.finish(self.session.close_code, self.session.close_reason)
            return
        reader.receive_data(data)
        if self._events is None:
            self._events = reader.events()
        self._handle_events(now)

    def _handle_events(self, now: float) -> None:
        """Handle up to :data:`EVENTS_PER_TURN` events; keep the rest for the next turn."""
        events, session = self._events, self.session
        assert events is not None
        for budget in range(EVENTS_PER_TURN, 0, -1):
            if session.busy:  # an async hook runs: the rest waits until it is done
                return
            event = next(events, None)
            if event is None:
                self._events = None
                return
            if isinstance(event, (str, bytes)):  # a message in one frame, from the fast path
                if session.state is OPEN:
                    self._on_frame(event, True, True, now)
            else:
                self._handle_event(event, now)
            if session.state is CLOSED:
                return
            if session.mailbox:  # replies leave before a later frame can fail or close
                session.intake(now)
            if budget == 1:
                session.schedule()  # more next turn: the adapter pauses reading meanwhile

    def _handle_event(self, event: Event, now: float) -> None:
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            if self.session.state is OPEN:
                self._on_data(event, now)  # type: ignore[arg-type]
        elif kind is Progress:  # part of a message: the peer is not idle
            if self.session.state is OPEN:
                self.session.last_input = now
        elif kind is Ping or kind is Pong:
            if not self._allow_control(now):
                return
            if kind is Pong:
                self._on_pong(event)  # type: ignore[arg-type]
            elif self._ws is not None and self._ws.state is WSState.OPEN:
                self._pong(event, now)  # type: ignore[arg-type]
        elif kind is CloseConnection:
            self._on_close_frame(event)  # type: ignore[arg-type]

    def _pong(self, ping: Ping, now: float) -> None:
        """Answer a ping; pongs count against ``max_buffered_amount`` like messages do."""
        assert self._ws is not None
        pong = self._ws.send(ping.response())
        if self.session.overflows(len(pong), now):
            return
        self._emit(pong)

    def _allow_control(self, now: float) -> bool:
        """Count a ping or pong against ``max_control_rate``; past it, close with 1008."""
        assert self.session.channel is not None
        rate = self.session.channel.max_control_rate
        if rate is None or self._control.allow(now, rate) or self.session.state is not OPEN:
            return True
        reason = f"more than {rate:g} control frames per second"
        self.session.error = ProtocolError(reason, code=CloseCode.POLICY_VIOLATION)
        self.session.close(CloseCode.POLICY_VIOLATION, reason, now)
        return False

    def _on_data(self, event: TextMessage | BytesMessage, now: float) -> None:
        data: Message = event.data if isinstance(event.data, str) else bytes(event.data)
        self._on_frame(data, event.frame_finished, event.message_finished, now)

    def _on_frame(self, data: Message, frame_finished: bool, finished: bool, now: float) -> None:
        """Data of a message: a whole frame, or part of one (``frame_finished`` false);
        ``finished``: the message's last."""
        session = self.session
        if isinstance(data, str):
            self._size += len(data) if data.isascii() else len(data.encode())
        else:
            self._size += len(data)
        session.last_input = now  # a message in progress is not idleness
        if frame_finished:
            self._fragments += 1
        fault = self._over_limits()
        if fault is not None:
            self._first = self._rest = None
            session.error = ProtocolError(fault, code=CloseCode.MESSAGE_TOO_BIG)
            session.close(CloseCode.MESSAGE_TOO_BIG, fault, now)
        elif finished:
            message = data if self._first is None else self._reassemble(data)
            size, self._size, self._fragments = self._size, 0, 0
            session.deliver(message, size, now)
        else:
            self._accumulate(data)

    def _over_limits(self) -> str | None:
        """Why the message being received breaks a limit, or None."""
        assert self.session.channel is not None
        most = self.session.channel.max_fragments
        too_big = self.session.too_big(self._size)
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

    def _on_close_frame(self, event: CloseConnection) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is WSState.OPEN:  # wsproto could not parse: the peer broke the protocol
            code = CloseCode(int(event.code))
            self.session.error = ProtocolError(event.reason or code.name, code=code)
            self._fail(code, event.reason or "")
        elif ws.state is WSState.REMOTE_CLOSING:  # the peer starts the closing handshake
            session = self.session
            if session.state is OPEN:
                session.close_code, session.close_reason = int(event.code), event.reason or ""
            self._emit(ws.send(CloseConnection(code=event.code)))
            session.finish(session.close_code, session.close_reason)
        else:  # the peer answered our close frame
            self.session.finish(self.session.close_code, self.session.close_reason)

    # -- OPEN: output ---------------------------------------------------------------------

    def send_message(self, item: Outgoing, now: float) -> None:
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
            self.buffered += item.size

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame and finish."""
        assert self._ws is not None
        if self._ws.state is WSState.OPEN:
            self._emit(self._ws.send(CloseConnection(code=code, reason=reason[:120])))
        if self.session.state is OPEN:
            self.session.close_code, self.session.close_reason = code, reason
        self.session.finish(self.session.close_code, self.session.close_reason)

    # -- keepalive ------------------------------------------------------------------------

    def keepalive_due(self) -> float | None:
        assert self.session.channel is not None
        timeout, interval = self.session.channel.ping_timeout, self.session.channel.ping_interval
        if self._ping_payload is not None and timeout is not None:
            return self._ping_sent + timeout  # waiting for the pong
        return None if interval is None else self._ping_base + interval

    def keepalive(self, now: float) -> None:
        channel, ws = self.session.channel, self._ws
        assert channel is not None and ws is not None
        if self._ping_payload is not None:
            if channel.ping_timeout is not None and now >= self._ping_sent + channel.ping_timeout:
                self.session.error = ProtocolError(
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

    def input_resumed(self, now: float) -> None:
        if self._ping_payload is not None:
            self._ping_sent = now  # its pong could not be read meanwhile: wait afresh

    def _on_pong(self, event: Pong) -> None:
        if self._ping_payload is None or bytes(event.payload) != self._ping_payload:
            return  # unsolicited (allowed by RFC 6455 section 5.5.3), or stale
        self._ping_payload = None
        if self.session.state is OPEN:
            self.session.arm_open()  # the next ping is due ping_interval after the last one

    def __repr__(self) -> str:
        return f"<ServerConnection {self.peer} {self.session.state.value}>"
