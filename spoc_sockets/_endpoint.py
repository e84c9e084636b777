"""Endpoint: the part of a connection's life that does not depend on how messages travel.

Two kinds of connection share it: :class:`~spoc_sockets.ServerConnection` (the library
parses bytes with h11 and wsproto) and :class:`~spoc_sockets._session.MessageSession` (an
ASGI server parses them). What they share lives here, once:

* the handshake decision: 503 while the server shuts down, routing (404, path params),
  the channel's checks, ``authenticate``, a :class:`Deferred` decided later from any
  thread, within ``router.handshake_timeout`` (else 503);
* ``max_message_size`` (bytes, as UTF-8 for text: 1009 past it);
* the :class:`Connection` handle, the upgraded set, and the mailbox other threads post to
  (:meth:`post`), with one wake-up until the owner flushes;
* the output limit (``max_buffered_amount``) and the channel's ``overflow`` policy;
* the close bookkeeping (``CLOSING`` until the peer answers or ``close_timeout``) and the
  end (:meth:`_finish`: every set left, ``on_close`` run once).

A subclass says how things are sent (:meth:`_send_accept`, :meth:`_send_refusal`,
:meth:`_queue`, :meth:`_send_close`, :meth:`_discard_output`) and how its owner is woken
(:meth:`_wake`).
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

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

__all__ = ["CLOSED", "CLOSING", "CONNECTING", "OPEN", "SHUTTING_DOWN", "SLOW_CONSUMER", "Endpoint"]

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


class Endpoint(ABC):
    """One connection's decision, handle, output limit and end (see the module)."""

    #: the client's address, if known
    peer: tuple[str, int] | None

    def __init__(self, router: Router, now: float, spawn: Spawn | None = None) -> None:
        self.router = router
        self._clock = now  # the latest time the owner told us (for durations in logs)
        self._last_input = now  # when the last message came (for idle_timeout)
        self._route: str | None = None  # the path the request was routed by
        self._spawn = spawn  # runs the coroutine of an async hook (None: cannot)
        self._busy = False  # an async on_connect / on_message is running: input waits
        self._hook_ended: str | None = None  # "done" or "failed", until the next turn
        self._cancel_authenticate: Callable[[], object] | None = None  # an async one runs
        self._admission: tuple[ChannelServer, Request] | None = None  # a place taken
        #: where this connection is in its life
        self.state = CONNECTING
        #: the application's handle, once accepted
        self.connection: Connection | None = None
        self._channel: ChannelServer | None = None
        self._request: Request | None = None
        self._subprotocol: str | None = None
        self._deferred: Deferred | None = None
        self._mailbox: deque[object] = deque()
        self._scheduled = False
        # output accounting: framed bytes the owner holds, plus what sits in the mailbox
        # (``_posted`` is added to by any thread, ``_taken`` by the owner only)
        self._buffered = 0
        self._posted = 0
        self._taken = 0
        self._overflowed = False
        self._deadline: float | None = None
        self._close_code: int = CloseCode.ABNORMAL_CLOSURE
        self._close_reason = ""
        self._set_deadline(now + router.handshake_timeout)

    # -- what the owner reads and calls ------------------------------------------------------

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for the peer: posted from any thread, or framed and not yet
        taken by the owner. ``max_buffered_amount`` bounds it."""
        return self._buffered + max(0, self._posted - self._taken)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` must be called next, or None."""
        return self._deadline

    def handle_timeout(self, now: float) -> None:
        """Act on a deadline that has passed (a call before it does nothing)."""
        if self._deadline is None or now < self._deadline:
            return
        self._clock = now
        with self._guard():
            if self.state is CONNECTING:
                self._handshake_expired()
            elif self.state is OPEN:
                self._open_deadline_passed(now)
            elif self.state is CLOSING:
                self._finish(self._close_code, self._close_reason)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Nothing raises out of the core: an unexpected error ends this connection only
        (logged on ``spoc_sockets.core``, and the transport is dropped)."""
        try:
            yield
        except Exception:
            core_logger.exception("internal error in the core; dropping %r", self)
            self._discard_output()
            self._finish(CloseCode.INTERNAL_ERROR, "internal error")

    def post(self, item: Outgoing | CloseRequest) -> None:
        """Queue a message or close request from any thread (see :meth:`Connection.send`).

        The output limit applies here, so memory stays bounded however fast other
        threads send: past ``max_buffered_amount`` the channel's ``overflow`` policy
        drops the message, or closes the connection with 1008 (dropping what is queued).
        """
        channel, conn = self._channel, self.connection  # read once: _finish may clear them
        if conn is None or channel is None or self.state is CLOSED or self._overflowed:
            return  # discarded, and nothing accumulates on a dead connection
        if isinstance(item, Outgoing):
            fits = self._fits(channel, conn, item.size)
            if fits is False:
                return  # dropped (and counted)
            if fits is True:
                self._posted += item.size
            else:
                item = fits
        self._mailbox.append(item)
        self._schedule()

    def shutdown(self) -> None:
        """The server is stopping: close 1001 when open, 503 or drop when connecting."""
        if self.state is OPEN:
            self.post(CloseRequest(CloseCode.GOING_AWAY, "server shutting down"))
        elif self.state is CONNECTING:
            if self._deferred is not None:
                self._refuse_for(ProtocolError(SHUTTING_DOWN, status=503))
            else:
                self._finish(CloseCode.ABNORMAL_CLOSURE, "")

    # -- wake-ups and timers ---------------------------------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._wake()

    @abstractmethod
    def _wake(self) -> None:
        """Tell the owner there is something to flush (at most once until it flushes)."""

    def _set_deadline(self, deadline: float | None) -> None:
        self._deadline = deadline

    # -- OPEN: the idle timeout, and the keepalive where the subclass runs one --------------

    def _arm_open(self) -> None:
        """The next deadline of an OPEN connection: its keepalive's, or when it would
        have been idle for ``idle_timeout`` (the earlier)."""
        assert self._channel is not None
        due = self._keepalive_due()
        idle = self._channel.idle_timeout
        if idle is not None:
            due = min(self._last_input + idle, due if due is not None else float("inf"))
        self._set_deadline(due)

    def _open_deadline_passed(self, now: float) -> None:
        assert self._channel is not None
        if self._busy:  # nothing can be read meanwhile: the clocks restart when it ends
            self._set_deadline(None)
            return
        idle = self._channel.idle_timeout
        if idle is not None and now >= self._last_input + idle:
            self._close(CloseCode.GOING_AWAY, "idle timeout", now)
            return
        self._keepalive(now)
        if self.state is OPEN:
            self._arm_open()

    def _keepalive_due(self) -> float | None:
        """When the keepalive next needs :meth:`handle_timeout` (None: never)."""
        return None

    def _keepalive(self, now: float) -> None:  # noqa: B027 - an optional hook
        """An OPEN deadline passed: ping, or fail a missing pong, when due."""

    # -- the decision -------------------------------------------------------------------

    def _resolve(self, request: Request, refusing: bool) -> Route | None:
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
    def _routed(route: Route | None, request: Request) -> tuple[ChannelServer, Request]:
        """The channel of an upgrade ``request`` and the request with its path params;
        :class:`ProtocolError` (404) when no channel is there."""
        if route is None:
            raise ProtocolError(f"no channel at {request.path}", status=404)
        return route.channel, replace(request, path_params=route.params)

    def _refuse_for(self, error: ProtocolError) -> None:
        """Refuse the handshake with the status of ``error`` (400 if it has none)."""
        self._refuse(error.status or 400, error.headers, f"{error}\n".encode())

    def _decide(self, channel: ChannelServer, request: Request, now: float) -> None:
        """Run the channel's checks and ``authenticate``: accept, refuse, or wait."""
        try:
            self.router.admit(channel, request, now)
            self._admission = (channel, request)
            subprotocol, decision = channel._handshake(request)
        except Reject as reject:
            self._refuse(reject.status, reject.headers, reject.body)
            return
        except Exception:
            logger.exception("handshake of %s failed", request.path)
            self._refuse(500, (), b"internal server error\n")
            return
        self._channel, self._request, self._subprotocol = channel, request, subprotocol
        if inspect.isawaitable(decision):  # an async authenticate: decided when it is done
            decision = self._defer(decision)
            if decision is None:
                self._refuse(500, (), b"internal server error\n")
                return
        if isinstance(decision, Deferred):
            self._deferred = decision
            decision.attach(self._schedule)
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
        """Apply a :class:`Deferred` decision that arrived (called when flushing)."""
        if self._deferred is None or self.state is not CONNECTING:
            return
        decision = self._deferred.decision
        if isinstance(decision, Reject):
            self._refuse(decision.status, decision.headers, decision.body)
        elif decision is not None:
            self._accept(decision[0], now)

    def _accept(self, user: object, now: float) -> None:
        channel, request = self._channel, self._request
        assert channel is not None and request is not None
        self._deferred = None
        self._send_accept(now)
        self.state = OPEN
        self.connection = conn = Connection(
            self, channel, request, user, self._subprotocol, self._route or "", now
        )
        self.router.enter(conn)
        connections_logger.info(
            "open %s peer=%s user=%s conn=%d", request.path, _peer(self.peer), _who(user), conn.id
        )
        self._last_input = now
        self._arm_open()
        self._after_hook(channel._opened(conn), now)

    def _refuse(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self.router.refused(self._route, status)
        path = self._request.path if self._request is not None else self._route or "-"
        connections_logger.info("refused %s peer=%s status=%d", path, _peer(self.peer), status)
        self._send_refusal(status, headers, body)
        self._finish(CloseCode.ABNORMAL_CLOSURE, "")

    def _handshake_expired(self) -> None:
        if self._deferred is not None:
            self._deferred._notify = None
            self._refuse(503, (), b"the handshake was not decided in time\n")
        else:
            self._finish(CloseCode.ABNORMAL_CLOSURE, "")

    # -- messages -------------------------------------------------------------------------

    def _deliver(self, message: Message, size: int, now: float) -> None:
        """A complete message of ``size`` bytes from the peer: ``on_message``, or 1011
        if it raises."""
        conn = self.connection
        assert self._channel is not None and conn is not None
        self._last_input = now  # the idle deadline follows lazily (_open_deadline_passed)
        conn.messages_in += 1
        conn.bytes_in += size
        self._after_hook(self._channel._received(conn, message), now)

    def _after_hook(self, outcome: Outcome, now: float) -> None:
        """Act on what ``on_connect`` or ``on_message`` gave: nothing, 1011 for a
        failure, or (async) run it while the connection's input waits."""
        if outcome is True:
            return
        if outcome is not False and self._spawn is not None:
            self._busy = True
            self._spawn(settle(outcome, self._hook_done))
            self._schedule()  # the adapter learns input_paused at once, and stops reading
            return
        if outcome is not False:
            discard(outcome)
            logger.error("a hook is async and this server cannot await it")
        self._close(CloseCode.INTERNAL_ERROR, "internal error", now)

    def _hook_done(self, ok: bool, result: object) -> None:
        """An async hook finished (on the owner's thread); the next turn resumes input
        (:meth:`_take_hook_end`), or closes with 1011 if it failed."""
        self._hook_ended = "done" if ok else "failed"
        self._schedule()

    def _take_hook_end(self, now: float) -> None:
        """At the connection's turn after an async hook ended: close with 1011 before any
        later input if it failed, else take input again; the idle and pong clocks restart,
        since nothing could be read while it ran."""
        ended, self._hook_ended = self._hook_ended, None
        if ended is None:
            return
        self._busy = False
        if self.state is not OPEN:
            return
        if ended == "failed":
            self._close(CloseCode.INTERNAL_ERROR, "internal error", now)
            return
        self._last_input = now
        self._input_resumed(now)
        self._arm_open()

    def _input_resumed(self, now: float) -> None:  # noqa: B027 - an optional hook
        """Input flows again after an async hook (the keepalive restarts its pong wait)."""

    @property
    def input_paused(self) -> bool:
        """True while input must wait (an async hook is running): the adapter stops
        reading until the connection is pending again and this is false."""
        return self._busy

    def _intake(self, now: float) -> None:
        """Take what other threads posted, in order, on the owner's thread."""
        mailbox = self._mailbox
        while mailbox:
            item = mailbox.popleft()
            if isinstance(item, Outgoing):
                self._taken += item.size
                if self.state is OPEN:
                    self._queue(item, now)
                    conn = self.connection
                    assert conn is not None
                    conn.messages_out += 1
                    conn.bytes_out += len(item.payload)
            elif isinstance(item, CloseRequest) and self.state is OPEN:
                self._take_close(item, now)
        # posters race only with each other on ``_posted``; an empty mailbox resyncs it
        self._posted = self._taken

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

    def _overflows(self, size: int, now: float) -> bool:
        """Whether ``size`` more bytes, produced on the owner's thread, would pass
        ``max_buffered_amount``; if so, the ``overflow`` policy applies (see :meth:`_fits`)."""
        assert self._channel is not None and self.connection is not None
        fits = self._fits(self._channel, self.connection, size)
        if isinstance(fits, CloseRequest):
            self._take_close(fits, now)
        return fits is not True

    def _take_close(self, request: CloseRequest, now: float) -> None:
        """Close as ``request`` asks (dropping the queued output first if it says so)."""
        if request.discard:
            self._discard_output()
        self._close(request.code, request.reason, now)

    def _too_big(self, size: int) -> str | None:
        """Why a message of ``size`` bytes breaks ``max_message_size`` (the close reason
        of 1009), or None."""
        assert self._channel is not None
        limit = self._channel.max_message_size
        if limit is not None and size > limit:
            return f"message over {limit} bytes"
        return None

    # -- the end --------------------------------------------------------------------------

    def _close(self, code: int, reason: str, now: float) -> None:
        """Start the closing handshake (OPEN → CLOSING), bounded by ``close_timeout``."""
        if self.state is not OPEN:
            return
        assert self._channel is not None and self.connection is not None
        self.state = CLOSING
        self._close_code, self._close_reason = code, reason
        self._channel._leaving(self.connection)
        self._send_close(code, reason)
        self._set_deadline(now + self._channel.close_timeout)

    def _finish(self, code: int, reason: str) -> None:
        """Leave every set, run ``on_close`` once, and tell the owner (→ CLOSED)."""
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._deadline = None
        self._mailbox.clear()
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
            assert self._channel is not None
            self.router.leave(conn, code)
            connections_logger.info(
                "closed %s peer=%s user=%s conn=%d code=%d duration=%.3fs in=%d/%dB out=%d/%dB",
                conn.request.path,
                _peer(self.peer),
                _who(conn.user),
                conn.id,
                code,
                self._clock - conn.opened_at,
                conn.messages_in,
                conn.bytes_in,
                conn.messages_out,
                conn.bytes_out,
            )
            outcome = self._channel._closed(conn, code, reason)
            if outcome is not True and outcome is not False:
                if self._spawn is not None:
                    self._spawn(settle(outcome, _ignore))
                else:
                    discard(outcome)
                    logger.error("on_close is async and this server cannot await it")
        self.connection = None  # no cycle with the handle: both are freed without the collector
        self._ended()
        self._schedule()

    def _ended(self) -> None:  # noqa: B027 - an optional hook
        """Just finished (a subclass releases what it holds)."""

    # -- how a subclass sends -------------------------------------------------------------

    @abstractmethod
    def _send_accept(self, now: float) -> None:
        """Accept the handshake (a 101 response, or an ASGI accept)."""

    @abstractmethod
    def _send_refusal(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        """Answer the handshake with an HTTP status instead."""

    @abstractmethod
    def _queue(self, item: Outgoing, now: float) -> None:
        """Queue one message for the peer (already counted against the limit)."""

    @abstractmethod
    def _send_close(self, code: int, reason: str) -> None:
        """Send the close frame (or ASGI close)."""

    @abstractmethod
    def _discard_output(self) -> None:
        """Drop the queued messages (not the handshake answer): the connection closes."""


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
