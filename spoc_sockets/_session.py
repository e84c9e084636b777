"""MessageSession: the core's side of a connection whose server already speaks WebSocket.

Under ASGI the server (uvicorn, hypercorn…) parses the handshake, frames messages, answers
pings and runs the closing handshake. What is left is the library's own work, done without
I/O as for :class:`~spoc_sockets.ServerConnection` and by the same
:class:`~spoc_sockets._endpoint.Endpoint`: routing, the channel's checks and authentication
(deferred too, within ``router.handshake_timeout``), the upgraded set, the hooks,
``max_message_size``, and the output queue with its limit.

The adapter turns the server's events into :meth:`receive` / :meth:`disconnected` /
:meth:`handle_timeout` calls and sends each action of :meth:`actions`:

* :class:`Accept` — accept the handshake (with a subprotocol);
* :class:`Refuse` — answer the handshake with an HTTP status instead;
* an :class:`~spoc_sockets.channel.Outgoing` — send its ``message`` (``str`` or
  ``bytes``), then report it with :meth:`delivered`;
* :class:`~spoc_sockets.channel.CloseRequest` — close with that code and reason.

States: ``CONNECTING`` until the decision, ``OPEN``, ``CLOSING`` once a close was asked
(the server's disconnect, or ``close_timeout``, ends it), ``CLOSED`` (:attr:`done`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._endpoint import CLOSED, CLOSING, OPEN, Endpoint
from .channel import CloseRequest, Message, Outgoing, Spawn
from .errors import CloseCode, ProtocolError
from .request import Request
from .router import Router

__all__ = ["Accept", "MessageSession", "Refuse"]


@dataclass(frozen=True)
class Accept:
    subprotocol: str | None


@dataclass(frozen=True)
class Refuse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


Action = Accept | Refuse | Outgoing | CloseRequest


class MessageSession(Endpoint):
    """One message-level connection: decide, then relay messages both ways."""

    def __init__(
        self,
        router: Router,
        request: Request,
        now: float,
        wakeup: Callable[[], None],
        *,
        refusing: bool = False,
        spawn: Spawn | None = None,
    ) -> None:
        self._wakeup = wakeup
        self._actions: list[Action] = []
        self.peer = request.peer
        super().__init__(router, now, spawn)
        try:
            channel, request = self._routed(self._resolve(request, refusing), request)
        except ProtocolError as refusal:
            self._refuse_for(refusal)
            return
        self._decide(channel, request, now)

    @property
    def done(self) -> bool:
        """True once the adapter should stop (after sending the last actions)."""
        return self.state is CLOSED

    # -- events -------------------------------------------------------------------------

    def receive(self, message: Message, now: float) -> None:
        """A complete message from the client."""
        if self.state is not OPEN:
            return
        assert self._channel is not None
        self._clock = now
        size = len(message.encode()) if isinstance(message, str) else len(message)
        with self._guard():
            too_big = self._too_big(size)
            if too_big is not None:
                self._close(CloseCode.MESSAGE_TOO_BIG, too_big, now)
            else:
                self._deliver(message, size, now)

    def disconnected(self, code: int, reason: str = "") -> None:
        """The server reports the connection gone (with the peer's or its own code)."""
        if self.state is CLOSING:
            code, reason = self._close_code, self._close_reason
        self._finish(code, reason)

    def actions(self, now: float) -> list[Action]:
        """What the adapter must send now, in order."""
        self._scheduled = False
        self._clock = now
        with self._guard():
            self._take_decision(now)
            self._take_hook_end(now)
            if self._mailbox:
                self._intake(now)
        actions, self._actions = self._actions, []
        return actions

    def delivered(self, actions: Sequence[Action]) -> None:
        """The server took these actions: their messages no longer count as queued."""
        self._buffered -= sum(a.size for a in actions if isinstance(a, Outgoing))

    # -- Endpoint: how this session sends ----------------------------------------------------

    def _wake(self) -> None:
        self._wakeup()

    def _act(self, action: Action) -> None:
        self._actions.append(action)
        self._schedule()

    def _send_accept(self, now: float) -> None:
        self._act(Accept(self._subprotocol))

    def _send_refusal(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        self._act(Refuse(status, headers, body))

    def _queue(self, item: Outgoing, now: float) -> None:
        self._act(item)
        self._buffered += item.size

    def _send_close(self, code: int, reason: str) -> None:
        self._act(CloseRequest(code, reason))

    def _discard_output(self) -> None:
        dropped = [a for a in self._actions if isinstance(a, Outgoing)]
        self._actions = [a for a in self._actions if not isinstance(a, Outgoing)]
        self.delivered(dropped)
