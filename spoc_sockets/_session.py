"""Session: every decision about one connection, written once, whatever carries it.

Two things carry a connection: :class:`~spoc_sockets.ServerConnection`, where the library
parses the bytes itself (h11 and wsproto), and an ASGI server, which parses them and hands
over whole messages (:mod:`spoc_sockets.asgi`, through an :class:`ActionQueue`). Both hold
one :class:`Session`, which owns, once:

* the handshake decision: 503 while the server shuts down, routing (404, path params),
  the channel's admission and checks, ``authenticate``, a :class:`Deferred` decided later
  from any thread, all within ``router.handshake_timeout`` (408 for a request head still
  incomplete, 503 for an undecided ``Deferred``);
* ``max_message_size`` (bytes, as UTF-8 for text: 1009 past it) and ``idle_timeout``;
* the :class:`Connection` handle, the upgraded set, and the mailbox other threads post to
  (:meth:`Session.post`), with one wake-up until the owner takes its turn;
* the output limit (``max_buffered_amount``) and the channel's ``overflow`` policy;
* the hooks (``on_connect``, ``on_message``, ``on_close``; ``async def`` ones run through
  ``spawn`` while input waits) and the 1011 of a failing one;
* the close bookkeeping (``CLOSING`` until the peer answers or ``close_timeout``) and the
  end (:meth:`Session.finish`: every set left, ``on_close`` run once).

How the decisions travel is its :class:`Wire`'s: a handful of narrow methods (send the
acceptance, a refusal, a message, a close; drop queued output; wake the owner; follow a
deadline; the keepalive where the wire runs one). ``ServerConnection`` is the byte wire;
:class:`ActionQueue` is the wire of a server that frames messages itself: it turns each
decision into an action (:class:`Accept`, :class:`Refuse`, an
:class:`~spoc_sockets.channel.Outgoing`, a :class:`~spoc_sockets.channel.CloseRequest`)
for the adapter to send.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from .channel import (
    ChannelServer,
    CloseRequest,
    Connection,
    ConnectionState,
    Deferred,
    Message,
    Outcome,
    Outgoing,
    Spawn,
    discard,
    settle,
    verdict,
)
from .errors import CloseCode, ProtocolError, Reject
from .request import Request
from .router import Route, Router

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "SHUTTING_DOWN",
    "SLOW_CONSUMER",
    "Accept",
    "Action",
    "ActionQueue",
    "Refuse",
    "Session",
    "Wire",
]

#: Errors of application code: hooks and HTTP routes (with their traceback).
logger = logging.getLogger("spoc_sockets.hooks")
core_logger = logging.getLogger("spoc_sockets.core")
#: One INFO line per connection opened, closed or refused (never a query string,
#: a cookie or a header value).
connections_logger = logging.getLogger("spoc_sockets.connections")

CONNECTING = ConnectionState.CONNECTING
OPEN = ConnectionState.OPEN
CLOSING = ConnectionState.CLOSING
CLOSED = ConnectionState.CLOSED

#: What the ``overflow="close"`` policy does: close with 1008, dropping the queued output.
SLOW_CONSUMER = CloseRequest(CloseCode.POLICY_VIOLATION, "slow consumer", discard=True)
#: Why a handshake is refused with 503 once the server is shutting down.
SHUTTING_DOWN = "the server is shutting down"


class Wire(Protocol):
    """How a :class:`Session`'s decisions travel: what carries one connection.

    The session calls these on its owner's thread (or, for :meth:`wake`, on any).
    """

    #: bytes (or message bytes) queued for the peer and not yet taken by the transport
    buffered: int

    def wake(self) -> None:
        """Tell the owner there is something to flush (at most once until its turn)."""

    def follow(self, deadline: float) -> None:
        """The session needs ``handle_timeout`` at ``deadline`` (earlier ones are void)."""

    def send_accept(self, subprotocol: str | None, now: float) -> None:
        """Accept the handshake (a 101 response, or an ASGI accept)."""

    def send_refusal(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        """Answer the handshake with an HTTP status instead."""

    def send_message(self, item: Outgoing, now: float) -> None:
        """Queue one message for the peer (already counted against the limit)."""

    def send_close(self, code: int, reason: str) -> None:
        """Send the close frame (or ASGI close)."""

    def discard_output(self) -> None:
        """Drop the queued messages (not the handshake answer): the connection closes."""

    def opened(self, now: float) -> None:
        """The handshake was accepted and ``on_connect`` ran: input may flow (frames
        that came with the request head)."""

    def head_incomplete(self) -> bool:
        """True when part of a request head came and not the rest (its deadline: 408)."""

    def keepalive_due(self) -> float | None:
        """When the keepalive next needs ``handle_timeout`` (None: never)."""

    def keepalive(self, now: float) -> None:
        """An OPEN deadline passed: ping, or fail a missing pong, when due."""

    def input_resumed(self, now: float) -> None:
        """Input flows again after an async hook (a pong wait restarts)."""

    def ended(self, now: float) -> None:
        """The session just finished (CLOSED): release what the wire holds."""


class Guard:
    """What ``with session.guard:`` does (see :attr:`Session.guard`); a class rather than
    a generator, as every message enters it twice."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> bool:
        if not isinstance(error, Exception):
            return False  # none, or KeyboardInterrupt and the like: not ours to stop
        self._session.fail_internally(error)
        return True


class Session:
    """One connection's decisions, handle, output limit and end (see the module)."""

    def __init__(
        self,
        router: Router,
        now: float,
        wire: Wire,
        *,
        peer: tuple[str, int] | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        self.router = router
        self.wire = wire
        #: ``with session.guard:`` nothing raises out of the core: an unexpected error
        #: ends this connection only (logged on ``spoc_sockets.core``, the transport dropped)
        self.guard = Guard(self)
        #: the client's address, if known
        self.peer = peer
        #: the latest time the owner gave (for durations in logs)
        self.clock = now
        #: when the last message (or a piece of one) came, for ``idle_timeout``
        self.last_input = now
        #: the last protocol fault of the peer (for logs), or None
        self.error: ProtocolError | None = None
        #: where this connection is in its life
        self.state = CONNECTING
        #: the application's handle, once accepted
        self.connection: Connection | None = None
        #: the channel that took the handshake, once routed and checked
        self.channel: ChannelServer | None = None
        #: the code and reason ``on_close`` will get once the closing handshake ends
        self.close_code: int = CloseCode.ABNORMAL_CLOSURE
        self.close_reason = ""
        self._route: str | None = None  # the path the request was routed by
        self._spawn = spawn  # runs the coroutine of an async hook (None: cannot)
        #: an async ``on_connect`` / ``on_message`` is running: input waits
        self.busy = False
        self._hook_ended: str | None = None  # "done" or "failed", until the next turn
        self._cancel_authenticate: Callable[[], object] | None = None  # an async one runs
        self._admission: tuple[ChannelServer, Request] | None = None  # a place taken
        self._request: Request | None = None
        self._subprotocol: str | None = None
        self._deferred: Deferred | None = None
        #: what other threads posted (:meth:`post`), for the owner's :meth:`intake`
        self.mailbox: deque[object] = deque()
        self._scheduled = False
        # output accounting: what the wire holds, plus what sits in the mailbox
        # (``_posted`` is added to by any thread, ``_taken`` by the owner only)
        self._posted = 0
        self._taken = 0
        self._overflowed = False
        self._deadline: float | None = None
        self._set_deadline(now + router.handshake_timeout)

    # -- what the owner reads and calls ------------------------------------------------------

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for the peer: posted from any thread, or held by the wire.
        ``max_buffered_amount`` bounds it."""
        return self.wire.buffered + max(0, self._posted - self._taken)

    @property
    def input_paused(self) -> bool:
        """True while input must wait (an async hook is running): the adapter stops
        reading until the connection is pending again and this is false."""
        return self.busy

    @property
    def deciding(self) -> bool:
        """True while a :class:`Deferred` handshake decision is awaited."""
        return self._deferred is not None

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must be called next, or None."""
        return self._deadline

    def handle_timeout(self, now: float) -> None:
        """Act on a deadline that has passed (a call before it does nothing)."""
        if self._deadline is None or now < self._deadline:
            return
        self.clock = now
        with self.guard:
            if self.state is CONNECTING:
                self._handshake_expired()
            elif self.state is OPEN:
                self._open_deadline_passed(now)
            elif self.state is CLOSING:
                self.finish(self.close_code, self.close_reason)

    def begin_turn(self, now: float) -> None:
        """The owner's turn begins, on its thread: apply a :class:`Deferred` decision
        that arrived, resume after an async hook. The owner then lets held input flow
        and calls :meth:`intake` (:meth:`turn` is all of it, for a wire that holds no
        input)."""
        self._scheduled = False
        self.clock = now
        if self._deferred is not None:
            self._take_decision(now)
        if self._hook_ended is not None:
            self._take_hook_end(now)

    def turn(self, now: float) -> None:
        """The owner's whole turn (:meth:`begin_turn`, then :meth:`intake`), guarded."""
        with self.guard:
            self.begin_turn(now)
            if self.mailbox:
                self.intake(now)

    def fail_internally(self, error: Exception) -> None:
        """An unexpected ``error`` in the core: end this connection only."""
        core_logger.error("internal error in the core; dropping %r", self.wire, exc_info=error)
        self.wire.discard_output()
        self.finish(CloseCode.INTERNAL_ERROR, "internal error")

    def post(self, item: Outgoing | CloseRequest) -> None:
        """Queue a message or close request from any thread (see :meth:`Connection.send`).

        The output limit applies here, so memory stays bounded however fast other
        threads send: past ``max_buffered_amount`` the channel's ``overflow`` policy
        drops the message, or closes the connection with 1008 (dropping what is queued).
        """
        channel, conn = self.channel, self.connection  # read once: finish may clear them
        if conn is None or channel is None or self.state is CLOSED or self._overflowed:
            return  # discarded, and nothing accumulates on a dead connection
        if isinstance(item, Outgoing):
            size = item.size
            fits = self._fits(channel, conn, size)
            if fits is False:
                return  # dropped (and counted)
            if fits is True:
                self._posted += size
            else:
                item = fits
        self.mailbox.append(item)
        self.schedule()

    def shutdown(self) -> None:
        """The server is stopping: close 1001 when open, 503 or drop when connecting."""
        if self.state is OPEN:
            self.post(CloseRequest(CloseCode.GOING_AWAY, "server shutting down"))
        elif self.state is CONNECTING:
            if self._deferred is not None:
                self.refuse_for(ProtocolError(SHUTTING_DOWN, status=503))
            else:
                self.finish(CloseCode.ABNORMAL_CLOSURE, "")

    def schedule(self) -> None:
        """Ask the owner for a turn (one wake-up until it takes it)."""
        if not self._scheduled:
            self._scheduled = True
            self.wire.wake()

    def _set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline
        if deadline is not None:
            self.wire.follow(deadline)

    # -- OPEN: the idle timeout, and the keepalive where the wire runs one -------------------

    def arm_open(self) -> None:
        """The next deadline of an OPEN connection: its keepalive's, or when it would
        have been idle for ``idle_timeout`` (the earlier)."""
        assert self.channel is not None
        due = self.wire.keepalive_due()
        idle = self.channel.idle_timeout
        if idle is not None:
            due = min(self.last_input + idle, due if due is not None else float("inf"))
        self._set_deadline(due)

    def _open_deadline_passed(self, now: float) -> None:
        assert self.channel is not None
        if self.busy:  # nothing can be read meanwhile: the clocks restart when it ends
            self._set_deadline(None)
            return
        idle = self.channel.idle_timeout
        if idle is not None and now >= self.last_input + idle:
            self.close(CloseCode.GOING_AWAY, "idle timeout", now)
            return
        self.wire.keepalive(now)
        if self.state is OPEN:
            self.arm_open()

    # -- the decision -------------------------------------------------------------------

    def start(self, request: Request, now: float, *, refusing: bool = False) -> None:
        """Decide on an upgrade ``request`` whose head a server already read (ASGI)."""
        try:
            channel, request = self.routed(self.resolve(request, refusing), request)
        except ProtocolError as refusal:
            self.refuse_for(refusal)
            return
        self.decide(channel, request, now)

    def resolve(self, request: Request, refusing: bool) -> Route | None:
        """The route of ``request`` (recorded for the route's counters), or None: no
        channel there. While the server shuts down (``refusing``), raise
        :class:`ProtocolError` (503) instead."""
        if refusing:
            raise ProtocolError(SHUTTING_DOWN, status=503)
        route = self.router.resolve(request.target.partition("?")[0])
        if route is not None:
            self._route = route.path
        return route

    @staticmethod
    def routed(route: Route | None, request: Request) -> tuple[ChannelServer, Request]:
        """The channel of an upgrade ``request`` and the request with its path params;
        :class:`ProtocolError` (404) when no channel is there."""
        if route is None:
            raise ProtocolError(f"no channel at {request.path}", status=404)
        if not route.params and not request.path_params:  # a static path: nothing to add
            return route.channel, request
        return route.channel, replace(request, path_params=route.params)

    def refuse_for(self, error: ProtocolError) -> None:
        """Refuse the handshake with the status of ``error`` (400 if it has none)."""
        self.refuse(error.status or 400, error.headers, f"{error}\n".encode())

    def decide(self, channel: ChannelServer, request: Request, now: float) -> None:
        """Run the channel's checks and ``authenticate``: accept, refuse, or wait."""
        try:
            self.router.admit(channel, request, now)
            self._admission = (channel, request)
            subprotocol, decision = channel._handshake(request)
        except Reject as reject:
            self.refuse(reject.status, reject.headers, reject.body)
            return
        except Exception:
            logger.exception("handshake of %s failed", request.path)
            self.refuse(500, (), b"internal server error\n")
            return
        self.channel, self._request, self._subprotocol = channel, request, subprotocol
        if decision is not None and inspect.isawaitable(decision):  # an async authenticate
            decision = self._defer(decision)
            if decision is None:
                self.refuse(500, (), b"internal server error\n")
                return
        if isinstance(decision, Deferred):
            self._deferred = decision
            decision.attach(self.schedule)
        else:
            self._accept(decision, now)

    def _defer(self, awaitable: Awaitable[object]) -> Deferred | None:
        """A :class:`Deferred` that the awaited ``authenticate`` decides (None if this
        server cannot await it: the handshake fails)."""
        if self._spawn is None:
            discard(awaitable)
            logger.error("authenticate is async and this server cannot await it")
            return None
        deferred = Deferred()

        def decide(ok: bool, result: object) -> None:
            if deferred.done:
                return
            if not ok:
                if isinstance(result, Reject):
                    deferred.reject(result.status, result.body, result.headers)
                else:
                    deferred.reject(500, "internal server error\n")
                return
            try:
                deferred.accept(verdict(result)[0])
            except Reject as reject:
                deferred.reject(reject.status, reject.body, reject.headers)
            except Exception:
                logger.exception("authenticate gave no usable decision")
                deferred.reject(500, "internal server error\n")

        self._cancel_authenticate = self._spawn(settle(awaitable, decide))
        return deferred

    def _take_decision(self, now: float) -> None:
        """Apply a :class:`Deferred` decision that arrived (at the owner's turn)."""
        if self._deferred is None or self.state is not CONNECTING:
            return
        decision = self._deferred.decision
        if isinstance(decision, Reject):
            self.refuse(decision.status, decision.headers, decision.body)
        elif decision is not None:
            self._accept(decision[0], now)

    def _accept(self, user: object, now: float) -> None:
        channel, request = self.channel, self._request
        assert channel is not None and request is not None
        self._deferred = None
        self.wire.send_accept(self._subprotocol, now)
        self.schedule()
        self.state = OPEN
        self.connection = conn = Connection(
            self, channel, request, user, self._subprotocol, self._route or "", now
        )
        self.router.enter(conn)
        if connections_logger.isEnabledFor(logging.INFO):
            connections_logger.info(
                "open %s peer=%s user=%s conn=%d",
                request.path,
                _peer(self.peer),
                _who(user),
                conn.id,
            )
        self.last_input = now
        self.arm_open()
        self._after_hook(channel._opened(conn), now)
        self.wire.opened(now)

    def refuse(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        """Answer the handshake with ``status`` (counted, logged) and finish."""
        self.router.refused(self._route, status)
        path = self._request.path if self._request is not None else self._route or "-"
        connections_logger.info("refused %s peer=%s status=%d", path, _peer(self.peer), status)
        self.wire.send_refusal(status, headers, body)
        self.finish(CloseCode.ABNORMAL_CLOSURE, "")

    def _handshake_expired(self) -> None:
        if self._deferred is not None:
            self._deferred._notify = None
            self.refuse(503, (), b"the handshake was not decided in time\n")
        elif self.wire.head_incomplete():
            self.error = ProtocolError("request head not received in time", status=408)
            self.refuse(408, (), b"request head not received in time\n")
        else:
            self.finish(CloseCode.ABNORMAL_CLOSURE, "")

    # -- messages -------------------------------------------------------------------------

    def receive(self, message: Message, now: float) -> None:
        """A complete message from a server that reassembles them (ASGI): 1009 past
        ``max_message_size``, else :meth:`deliver`."""
        if self.state is not OPEN:
            return
        self.clock = now
        size = len(message.encode()) if isinstance(message, str) else len(message)
        with self.guard:
            too_big = self.too_big(size)
            if too_big is not None:
                self.close(CloseCode.MESSAGE_TOO_BIG, too_big, now)
            else:
                self.deliver(message, size, now)

    def deliver(self, message: Message, size: int, now: float) -> None:
        """A complete message of ``size`` bytes from the peer: ``on_message``, or 1011
        if it raises."""
        conn = self.connection
        assert self.channel is not None and conn is not None
        self.last_input = now  # the idle deadline follows lazily (_open_deadline_passed)
        conn.messages_in += 1
        conn.bytes_in += size
        outcome = self.channel._received(conn, message)
        if outcome is not True:
            self._after_hook(outcome, now)

    def _after_hook(self, outcome: Outcome, now: float) -> None:
        """Act on what ``on_connect`` or ``on_message`` gave: nothing, 1011 for a
        failure, or (async) run it while the connection's input waits."""
        if outcome is True:
            return
        if outcome is not False and self._spawn is not None:
            self.busy = True
            self._spawn(settle(outcome, self._hook_done))
            self.schedule()  # the adapter learns input_paused at once, and stops reading
            return
        if outcome is not False:
            discard(outcome)
            logger.error("a hook is async and this server cannot await it")
        self.close(CloseCode.INTERNAL_ERROR, "internal error", now)

    def _hook_done(self, ok: bool, result: object) -> None:
        """An async hook finished (on the owner's thread); the next turn resumes input
        (:meth:`_take_hook_end`), or closes with 1011 if it failed."""
        self._hook_ended = "done" if ok else "failed"
        self.schedule()

    def _take_hook_end(self, now: float) -> None:
        """At the connection's turn after an async hook ended: close with 1011 before any
        later input if it failed, else take input again; the idle and pong clocks restart,
        since nothing could be read while it ran."""
        ended, self._hook_ended = self._hook_ended, None
        if ended is None:
            return
        self.busy = False
        if self.state is not OPEN:
            return
        if ended == "failed":
            self.close(CloseCode.INTERNAL_ERROR, "internal error", now)
            return
        self.last_input = now
        self.wire.input_resumed(now)
        self.arm_open()

    def intake(self, now: float) -> None:
        """Take what other threads posted, in order, on the owner's thread."""
        mailbox, wire, conn = self.mailbox, self.wire, self.connection
        while mailbox:
            item = mailbox.popleft()
            if isinstance(item, Outgoing):
                self._taken += item.size
                if self.state is OPEN:
                    wire.send_message(item, now)
                    assert conn is not None
                    conn.messages_out += 1
                    conn.bytes_out += len(item.payload)
            elif isinstance(item, CloseRequest) and self.state is OPEN:
                self._take_close(item, now)
        # posters race only with each other on ``_posted``; an empty mailbox resyncs it
        self._posted = self._taken
        self.schedule()

    def _fits(self, channel: ChannelServer, conn: Connection, size: int) -> bool | CloseRequest:
        """True when ``size`` more bytes of output fit under ``max_buffered_amount``.
        Otherwise the channel's ``overflow`` policy decides: ``"drop"`` gives False (the
        output is counted dropped), ``"close"`` gives :data:`SLOW_CONSUMER`, the close to
        take (the connection is marked overflowed: nothing more is queued)."""
        if self.buffered_amount + size <= channel.max_buffered_amount:
            return True
        if channel.overflow == "drop":
            conn.dropped += 1
            return False
        self._overflowed = True
        return SLOW_CONSUMER

    def overflows(self, size: int, now: float) -> bool:
        """Whether ``size`` more bytes, produced on the owner's thread, would pass
        ``max_buffered_amount``; if so, the ``overflow`` policy applies (see :meth:`_fits`)."""
        assert self.channel is not None and self.connection is not None
        fits = self._fits(self.channel, self.connection, size)
        if isinstance(fits, CloseRequest):
            self._take_close(fits, now)
        return fits is not True

    def _take_close(self, request: CloseRequest, now: float) -> None:
        """Close as ``request`` asks (dropping the queued output first if it says so)."""
        if request.discard:
            self.wire.discard_output()
        self.close(request.code, request.reason, now)

    def too_big(self, size: int) -> str | None:
        """Why a message of ``size`` bytes breaks ``max_message_size`` (the close reason
        of 1009), or None."""
        assert self.channel is not None
        limit = self.channel.max_message_size
        if limit is not None and size > limit:
            return f"message over {limit} bytes"
        return None

    # -- the end --------------------------------------------------------------------------

    def close(self, code: int, reason: str, now: float) -> None:
        """Start the closing handshake (OPEN → CLOSING), bounded by ``close_timeout``."""
        if self.state is not OPEN:
            return
        assert self.channel is not None and self.connection is not None
        self.state = CLOSING
        self.close_code, self.close_reason = code, reason
        self.channel._leaving(self.connection)
        self.wire.send_close(code, reason)
        self.schedule()
        self._set_deadline(now + self.channel.close_timeout)

    def disconnected(self, code: int, reason: str = "") -> None:
        """The server reports the connection gone (with the peer's or its own code):
        finish with it, or with our own close's code once we started closing."""
        if self.state is CLOSING:
            code, reason = self.close_code, self.close_reason
        self.finish(code, reason)

    def finish(self, code: int, reason: str) -> None:
        """Leave every set, run ``on_close`` once, and tell the owner (→ CLOSED)."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._deadline = None
        self.mailbox.clear()
        if self._deferred is not None:
            self._deferred._notify = None
        if self._cancel_authenticate is not None:  # undecided when the handshake ended
            self._cancel_authenticate()
            self._cancel_authenticate = None
        if self._admission is not None:
            self.router.discharge(*self._admission)
            self._admission = None
        conn = self.connection
        if conn is not None:
            assert self.channel is not None
            self.router.leave(conn, code)
            if connections_logger.isEnabledFor(logging.INFO):
                _log_closed(conn, self.peer, code, self.clock)
            outcome = self.channel._closed(conn, code, reason)
            if outcome is not True and outcome is not False:
                if self._spawn is not None:
                    self._spawn(settle(outcome, _ignore))
                else:
                    discard(outcome)
                    logger.error("on_close is async and this server cannot await it")
        self.connection = None  # no cycle with the handle: both are freed without the collector
        self.wire.ended(self.clock)
        self.schedule()

    def __repr__(self) -> str:
        return f"<Session {_peer(self.peer)} {self.state.value}>"


# -- the wire of a server that frames messages itself (ASGI) ----------------------------------


@dataclass(frozen=True)
class Accept:
    """Accept the handshake, with this subprotocol."""

    subprotocol: str | None


@dataclass(frozen=True)
class Refuse:
    """Answer the handshake with this HTTP status, headers and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


Action = Accept | Refuse | Outgoing | CloseRequest


class ActionQueue:
    """A :class:`Wire` whose decisions become actions for an adapter to send.

    The session wakes the adapter (``wakeup``, once until its next turn) whenever it acts;
    the adapter takes the actions in order with :meth:`take` after each :meth:`Session.turn`,
    sends each (an :class:`~spoc_sockets.channel.Outgoing`: its ``message``, ``str`` or
    ``bytes``), and reports those it sent with :meth:`delivered`: until then their
    messages count in ``buffered_amount``. Keepalive and framing are the server's.
    """

    def __init__(self, wakeup: Callable[[], None]) -> None:
        self._wakeup = wakeup
        self._actions: list[Action] = []
        self.buffered = 0

    def take(self) -> list[Action]:
        """What the adapter must send now, in order."""
        actions, self._actions = self._actions, []
        return actions

    def delivered(self, actions: list[Action]) -> None:
        """The server took these actions: their messages no longer count as queued."""
        self.buffered -= sum(a.size for a in actions if isinstance(a, Outgoing))

    # -- Wire -------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup()

    def follow(self, deadline: float) -> None:
        """Nothing: the adapter asks :meth:`Session.next_deadline` after each turn."""

    def send_accept(self, subprotocol: str | None, now: float) -> None:
        self._actions.append(Accept(subprotocol))

    def send_refusal(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self._actions.append(Refuse(status, headers, body))

    def send_message(self, item: Outgoing, now: float) -> None:
        self._actions.append(item)
        self.buffered += item.size

    def send_close(self, code: int, reason: str) -> None:
        self._actions.append(CloseRequest(code, reason))

    def discard_output(self) -> None:
        self.delivered([a for a in self._actions if isinstance(a, Outgoing)])
        self._actions = [a for a in self._actions if not isinstance(a, Outgoing)]

    def opened(self, now: float) -> None:
        """Nothing: the server holds no early input."""

    def head_incomplete(self) -> bool:
        return False  # the server read the whole head

    def keepalive_due(self) -> float | None:
        return None  # the server runs the keepalive

    def keepalive(self, now: float) -> None:
        """Nothing: the server runs the keepalive."""

    def input_resumed(self, now: float) -> None:
        """Nothing: no pong is awaited here."""

    def ended(self, now: float) -> None:
        """Nothing to release."""


def _log_closed(conn: Connection, peer: tuple[str, int] | None, code: int, now: float) -> None:
    connections_logger.info(
        "closed %s peer=%s user=%s conn=%d code=%d duration=%.3fs in=%d/%dB out=%d/%dB",
        conn.request.path,
        _peer(peer),
        _who(conn.user),
        conn.id,
        code,
        now - conn.opened_at,
        conn.messages_in,
        conn.bytes_in,
        conn.messages_out,
        conn.bytes_out,
    )


def _ignore(ok: bool, result: object) -> None:
    """Nothing waits for ``on_close`` (its failure is logged by :func:`settle`)."""


def _peer(peer: tuple[str, int] | None) -> str:
    return "-" if peer is None else f"{peer[0]}:{peer[1]}"


def _who(user: object) -> str:
    """A principal for a log line: a string or number as it is, else its ``id`` or
    ``name`` attribute, else its type (never its ``repr``: it may hold secrets)."""
    if user is None:
        return "-"
    if isinstance(user, (str, int)) and not isinstance(user, bool):
        return str(user)[:64]
    for attribute in ("id", "name"):
        value = getattr(user, attribute, None)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)[:64]
    if isinstance(user, dict):
        for key in ("id", "name"):
            value = user.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)[:64]
    return type(user).__name__
