"""MessageSession: the core's side of a connection whose server already speaks WebSocket.

Under ASGI the server (uvicorn, hypercorn…) parses the handshake, frames messages, answers
pings and runs the closing handshake. What is left is the library's own work, done here
without I/O like :class:`~spoc_sockets.ServerConnection`: routing, the channel's checks
and authentication (deferred too, within ``router.handshake_timeout``), the upgraded set,
the hooks, ``max_message_size``, and the output queue with its limit.

The adapter turns the server's events into :meth:`receive` / :meth:`disconnected` /
:meth:`handle_timeout` calls and sends each action of :meth:`actions`:

* :class:`Accept` — accept the handshake (with a subprotocol);
* :class:`Refuse` — answer the handshake with an HTTP status instead;
* a ``str`` or ``bytes`` — send that message;
* :class:`CloseRequest` — close with that code and reason.

States: ``CONNECTING`` until the decision, ``OPEN``, ``CLOSING`` once a close was asked
(the server's disconnect, or ``close_timeout``, ends it), ``CLOSED`` (:attr:`done`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from .channel import (
    ChannelServer,
    CloseRequest,
    Connection,
    ConnectionState,
    Deferred,
    Message,
    Outgoing,
)
from .errors import CloseCode, Reject
from .request import Request
from .router import Router

__all__ = ["Accept", "MessageSession", "Refuse"]

logger = logging.getLogger("spoc_sockets")

CONNECTING = ConnectionState.CONNECTING
OPEN = ConnectionState.OPEN
CLOSING = ConnectionState.CLOSING
CLOSED = ConnectionState.CLOSED


@dataclass(frozen=True)
class Accept:
    subprotocol: str | None


@dataclass(frozen=True)
class Refuse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


Action = Accept | Refuse | Message | CloseRequest


class MessageSession:
    """One message-level connection: decide, then relay messages both ways."""

    def __init__(
        self,
        router: Router,
        request: Request,
        now: float,
        wakeup: Callable[[], None],
        *,
        refusing: bool = False,
    ) -> None:
        self.router = router
        self.state = CONNECTING
        self.connection: Connection | None = None
        self._wakeup = wakeup
        self._actions: list[Action] = []
        self._buffered = 0
        self._mailbox: deque[object] = deque()
        self._channel: ChannelServer | None = None
        self._deferred: Deferred | None = None
        self._deadline: float | None = now + router.handshake_timeout
        self._close = (int(CloseCode.ABNORMAL_CLOSURE), "")
        if refusing:
            self._refuse(503, (), b"the server is shutting down\n")
        else:
            self._start(request, now)

    # -- state for the adapter ------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the adapter should stop (after sending the last actions)."""
        return self.state is CLOSED

    @property
    def buffered_amount(self) -> int:
        return self._buffered

    def next_deadline(self) -> float | None:
        return self._deadline

    # -- events -------------------------------------------------------------------------

    def receive(self, message: Message, now: float) -> None:
        """A complete message from the client."""
        if self.state is not OPEN:
            return
        assert self._channel is not None and self.connection is not None
        size = len(message.encode()) if isinstance(message, str) else len(message)
        limit = self._channel.max_message_size
        if limit is not None and size > limit:
            self._ask_close(CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes", now)
        elif not self._channel._received(self.connection, message):
            self._ask_close(CloseCode.INTERNAL_ERROR, "internal error", now)

    def disconnected(self, code: int, reason: str = "") -> None:
        """The server reports the connection gone (with the peer's or its own code)."""
        if self.state is CLOSING:
            code, reason = self._close
        self._finish(code, reason)

    def handle_timeout(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self.state is CONNECTING:
            self._refuse(503, (), b"the handshake was not decided in time\n")
        elif self.state is CLOSING:
            self._finish(*self._close)

    def post(self, item: object) -> None:
        """Queue a message or close request from any thread (the :class:`Link`)."""
        if self.state is CLOSED:
            return
        self._mailbox.append(item)
        self._wakeup()

    def shutdown(self, now: float) -> None:
        """The server stops: close 1001."""
        self._ask_close(CloseCode.GOING_AWAY, "server shutting down", now)

    def actions(self, now: float) -> list[Action]:
        """What the adapter must send now, in order."""
        if self._deferred is not None and self._deferred.done and self.state is CONNECTING:
            decision = self._deferred.decision
            if isinstance(decision, Reject):
                self._refuse(decision.status, decision.headers, decision.body)
            elif decision is not None:
                self._accept(decision[0], now)
        while self._mailbox:
            item = self._mailbox.popleft()
            if self.state is not OPEN:
                continue
            if isinstance(item, CloseRequest):
                self._ask_close(item.code, item.reason, now)
            else:
                self._queue(item, now)  # type: ignore[arg-type]
        actions, self._actions, self._buffered = self._actions, [], 0
        return actions

    # -- transitions ----------------------------------------------------------------------

    def _start(self, request: Request, now: float) -> None:
        found = self.router.resolve(request.target.partition("?")[0])
        if found is None:
            self._refuse(404, (), f"no channel at {request.path}\n".encode())
            return
        channel, params = found
        self._request = replace(request, path_params=params)
        self._channel = channel
        try:
            self._subprotocol, decision = channel._handshake(self._request)
        except Reject as reject:
            self._refuse(reject.status, reject.headers, reject.body)
            return
        except Exception:
            logger.exception("handshake of %s failed", request.path)
            self._refuse(500, (), b"internal server error\n")
            return
        if isinstance(decision, Deferred):
            self._deferred = decision
            decision.attach(self._wakeup)
        else:
            self._accept(decision, now)

    def _accept(self, user: object, now: float) -> None:
        assert self._channel is not None
        self._actions.append(Accept(self._subprotocol))
        self.state = OPEN
        self._deadline = None
        self.connection = conn = Connection(
            self, self._channel, self._request, user, self._subprotocol
        )
        self.router.enter(conn)
        if not self._channel._opened(conn):
            self._ask_close(CloseCode.INTERNAL_ERROR, "internal error", now)

    def _refuse(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self._actions.append(Refuse(status, headers, body))
        self._finish(CloseCode.ABNORMAL_CLOSURE, "")

    def _queue(self, item: Message | Outgoing, now: float) -> None:
        assert self._channel is not None and self.connection is not None
        message = item.message if isinstance(item, Outgoing) else item
        size = len(message)
        if self._buffered + size > self._channel.max_buffered_amount:
            if self._channel.overflow == "drop":
                self.connection.dropped += 1
                return
            self._actions = [a for a in self._actions if isinstance(a, Accept)]
            self._ask_close(CloseCode.POLICY_VIOLATION, "slow consumer", now)
            return
        self._actions.append(message)
        self._buffered += size

    def _ask_close(self, code: int, reason: str, now: float) -> None:
        if self.state is not OPEN:
            return
        assert self._channel is not None and self.connection is not None
        self.state = CLOSING
        self._close = (code, reason)
        self._channel._leaving(self.connection)
        self._actions.append(CloseRequest(code, reason))
        self._deadline = now + self._channel.close_timeout
        self._wakeup()

    def _finish(self, code: int, reason: str) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        self._deadline = None
        self._mailbox.clear()
        if self._deferred is not None:
            self._deferred._notify = None
        if self.connection is not None and self._channel is not None:
            self.router.leave(self.connection)
            self._channel._closed(self.connection, code, reason)
        self._wakeup()
