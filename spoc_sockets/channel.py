"""Channels and their connections: what application code subclasses and holds.

* :class:`ChannelServer` is subclassed once per channel: hooks plus documented options.
* :class:`Connection` is the handle its hooks receive for each upgraded client.
* :class:`Deferred` lets :meth:`ChannelServer.authenticate` decide later.

Nothing here frames, parses or writes: :meth:`Connection.send` only queues the message
for the transport that owns the connection (see :class:`~spoc_sockets.ServerConnection`),
which is why it is safe from any task or thread.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Literal, Protocol

from .errors import CloseCode, Reject, UsageError
from .frames import OP_BINARY, OP_TEXT, frame_header
from .request import Request

__all__ = ["ChannelServer", "Connection", "ConnectionState", "Deferred", "Outgoing"]

logger = logging.getLogger("spoc_sockets")

Message = str | bytes


class ConnectionState(Enum):
    """Where a connection is in its life (RFC 6455 section 4 and 7)."""

    CONNECTING = "connecting"  #: the opening handshake is in progress
    OPEN = "open"  #: messages flow both ways
    CLOSING = "closing"  #: a close frame was sent or received; the handshake is finishing
    CLOSED = "closed"  #: finished; the transport is (to be) closed


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message framed once, shared by every connection it is sent to.

    ``header`` and ``payload`` are the wire bytes of an unmasked, uncompressed frame;
    ``message`` is kept for transports that frame themselves (compression, ASGI).
    """

    message: Message
    header: bytes
    payload: bytes

    @property
    def size(self) -> int:
        """Bytes on the wire (header and payload), what the output limit counts."""
        return len(self.header) + len(self.payload)

    @classmethod
    def build(cls, message: Message) -> Outgoing:
        if isinstance(message, str):
            payload = message.encode()
            return cls(message, frame_header(OP_TEXT, len(payload)), payload)
        return cls(message, frame_header(OP_BINARY, len(message)), message)


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """``Connection.close()`` queued for the transport's owner.

    ``discard`` drops the output still queued (the ``"close"`` overflow policy).
    """

    code: int
    reason: str
    discard: bool = False


class Link(Protocol):
    """What a :class:`Connection` needs of the transport side that owns it."""

    state: ConnectionState

    def post(self, item: Outgoing | CloseRequest) -> None:
        """Queue ``item`` from any thread, applying the output limit."""

    @property
    def buffered_amount(self) -> int:
        """Bytes queued and not yet handed to the transport."""


def as_message(message: object) -> Message:
    """Check that ``message`` can be sent; copy mutable buffers so later changes don't leak."""
    if isinstance(message, (str, bytes)):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    raise UsageError(f"a message is str or bytes, not {type(message).__name__}")


def check_close(code: int, reason: str) -> None:
    """Raise :class:`UsageError` unless a server may send this close code and reason."""
    sendable = code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013)  # 1010: clients
    if not (sendable or 3000 <= code <= 4999):
        raise UsageError(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    if len(reason.encode()) > 123:
        raise UsageError("a close reason is at most 123 bytes of UTF-8")


_ids = itertools.count(1)


class Connection:
    """One upgraded client of a channel, as the channel's hooks see it.

    :meth:`send`, :meth:`send_json` and :meth:`close` may be called from any task or
    thread: they queue, and the adapter that owns the transport writes. A message sent
    after the connection started closing is discarded, as a browser's WebSocket does.
    """

    __slots__ = (
        "__weakref__",
        "_link",
        "channel",
        "dropped",
        "id",
        "request",
        "subprotocol",
        "user",
    )

    def __init__(
        self,
        link: Link,
        channel: ChannelServer,
        request: Request,
        user: object,
        subprotocol: str | None,
    ) -> None:
        self._link = link
        #: the channel that accepted this connection
        self.channel = channel
        #: the upgrade request
        self.request = request
        #: what :meth:`ChannelServer.authenticate` returned
        self.user = user
        #: the negotiated subprotocol, or ``None``
        self.subprotocol = subprotocol
        #: a process-unique number, increasing
        self.id = next(_ids)
        #: messages discarded by the ``"drop"`` overflow policy
        self.dropped = 0

    @property
    def state(self) -> ConnectionState:
        return self._link.state

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this client (framed) and not yet handed to its transport.

        It grows as soon as :meth:`send` returns, from any thread, and the channel's
        ``max_buffered_amount`` bounds it.
        """
        return self._link.buffered_amount

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (bytes-like) message."""
        self._link.post(Outgoing.build(as_message(message)))

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` encoded as compact JSON in a text message."""
        self._link.post(Outgoing.build(json.dumps(obj, separators=(",", ":"), ensure_ascii=False)))

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; :meth:`ChannelServer.on_close` follows."""
        check_close(code, reason)
        self._link.post(CloseRequest(code, reason))

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.request.path} {self.state.value}>"


class Deferred:
    """A handshake decision that :meth:`ChannelServer.authenticate` makes later.

    Return one from ``authenticate``, then call :meth:`accept` or :meth:`reject` once,
    from any task or thread. The handshake still ends at the router's
    ``handshake_timeout``: a decision that comes later is ignored (see :attr:`done`).
    """

    __slots__ = ("_notify", "decision")

    def __init__(self) -> None:
        #: the user to accept, or the :class:`Reject`; ``None`` until decided
        self.decision: tuple[object] | Reject | None = None
        self._notify: Callable[[], None] | None = None

    @property
    def done(self) -> bool:
        return self.decision is not None

    def accept(self, user: object = None) -> None:
        """Accept the handshake; ``user`` becomes :attr:`Connection.user`."""
        self._decide((user,))

    def reject(
        self, status: int = 403, body: str | bytes = "", headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """Refuse the handshake with an HTTP status, as ``raise Reject(...)`` would."""
        self._decide(Reject(status, body, headers))

    def _decide(self, decision: tuple[object] | Reject) -> None:
        if self.decision is not None:
            raise UsageError("this handshake was already decided")
        self.decision = decision
        if self._notify is not None:
            self._notify()

    def attach(self, notify: Callable[[], None]) -> None:
        """Called by the core: ``notify`` runs when the decision arrives (or at once)."""
        self._notify = notify
        if self.decision is not None:
            notify()


Overflow = Literal["close", "drop"]


class ChannelServer:
    """Base class of a channel: override the hooks, set the options.

    Options are class attributes with documented defaults; the constructor takes the
    same names as keyword arguments::

        class Echo(ChannelServer):
            max_message_size = 2**16
            def on_message(self, conn, message):
                conn.send(message)

        router.add("/echo", Echo(ping_interval=None))

    Hooks run on the adapter's loop or thread and must not block.
    """

    #: Largest message accepted, in bytes (after decompression); larger closes with 1009.
    #: ``None`` means no limit.
    max_message_size: int | None = 2**20
    #: Allowed ``Origin`` values; ``None`` allows any. Put ``None`` in the list to allow
    #: clients that send no Origin (non-browser clients). Refused with HTTP 403.
    origins: Sequence[str | None] | None = None
    #: Subprotocols this channel speaks, preferred first. When the client offers some
    #: and none is here, the handshake is refused with HTTP 400.
    subprotocols: Sequence[str] = ()
    #: Accept permessage-deflate (RFC 7692) when the client offers it.
    compression: bool = False
    #: Seconds between keepalive pings; ``None`` disables them.
    ping_interval: float | None = 20.0
    #: Seconds to wait for the pong; past it the connection closes with 1011.
    ping_timeout: float | None = 20.0
    #: Seconds to wait for the peer's close frame after sending ours.
    close_timeout: float = 10.0
    #: Most bytes queued for one client before ``overflow`` applies.
    max_buffered_amount: int = 4 * 2**20
    #: What happens to a message that would exceed ``max_buffered_amount``:
    #: ``"close"`` closes the connection with 1008, ``"drop"`` discards the message
    #: (counted in :attr:`Connection.dropped`).
    overflow: Overflow = "close"

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "max_message_size",
        "origins",
        "subprotocols",
        "compression",
        "ping_interval",
        "ping_timeout",
        "close_timeout",
        "max_buffered_amount",
        "overflow",
    )

    def __init__(self, **options: Any) -> None:
        for name, value in options.items():
            if name not in self.OPTIONS:
                raise UsageError(f"{type(self).__name__} has no option {name!r}")
            setattr(self, name, value)
        self._check_options()
        self._clients: dict[Connection, None] = {}

    def _check_options(self) -> None:
        """Refuse option values that would misbehave (a zero interval would spin)."""
        positive = {
            "max_message_size": self.max_message_size,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
        }
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise UsageError(f"{name} is a positive number or None, not {value!r}")
        if not self.close_timeout > 0 or not self.max_buffered_amount > 0:
            raise UsageError("close_timeout and max_buffered_amount are positive numbers")
        if self.overflow not in ("close", "drop"):
            raise UsageError(f"overflow is 'close' or 'drop', not {self.overflow!r}")

    # -- hooks ----------------------------------------------------------------------

    def authenticate(self, request: Request) -> object:
        """Decide whether ``request`` may connect.

        Return the principal (available as :attr:`Connection.user`), raise
        :class:`~spoc_sockets.Reject` to refuse with an HTTP status, or return a
        :class:`Deferred` and decide later. The default accepts everyone as ``None``.
        """
        return None

    def on_connect(self, conn: Connection) -> None:
        """Called once the handshake succeeded; ``conn`` is now in :attr:`clients`."""

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        """Called for every complete message: ``str`` for text, ``bytes`` for binary."""

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        """Called once when the connection ends (1006 if the transport was lost)."""

    # -- negotiation ----------------------------------------------------------------

    def check_origin(self, request: Request) -> None:
        """Raise :class:`Reject` (403) unless :attr:`origins` allows the request."""
        if self.origins is not None and request.origin not in self.origins:
            raise Reject(403, f"origin {request.origin or '(none)'} is not allowed")

    def select_subprotocol(self, request: Request) -> str | None:
        """Pick the subprotocol (this channel's preference wins), or raise Reject(400)."""
        offered = request.subprotocols
        if not self.subprotocols or not offered:
            return None
        for protocol in self.subprotocols:
            if protocol in offered:
                return protocol
        raise Reject(400, f"none of the subprotocols {', '.join(offered)} is supported")

    # -- fan-out --------------------------------------------------------------------

    @property
    def clients(self) -> frozenset[Connection]:
        """The open connections of this channel (a snapshot)."""
        return frozenset(self._clients)

    def broadcast(
        self,
        message: str | bytes,
        exclude: Connection | Collection[Connection] = (),
        to: Iterable[Connection] | None = None,
    ) -> None:
        """Send ``message`` to every open client (or to those of ``to``) but ``exclude``.

        The message is framed once; every recipient's queue holds the same bytes.
        """
        outgoing = Outgoing.build(as_message(message))
        skip = (exclude,) if isinstance(exclude, Connection) else exclude
        for conn in tuple(self._clients) if to is None else to:
            if conn not in skip:
                conn._link.post(outgoing)

    # -- called by the core ---------------------------------------------------------

    def _handshake(self, request: Request) -> tuple[str | None, object]:
        """Origin, subprotocol, then authentication: ``(subprotocol, decision)``.

        The decision is the user, or a :class:`Deferred`; a refusal raises
        :class:`Reject`.
        """
        self.check_origin(request)
        subprotocol = self.select_subprotocol(request)
        return subprotocol, self.authenticate(request)

    def _opened(self, conn: Connection) -> bool:
        """Register ``conn`` and run :meth:`on_connect`; False if the hook failed."""
        self._clients[conn] = None
        return _guard(self.on_connect, conn)

    def _received(self, conn: Connection, message: Message) -> bool:
        """Run :meth:`on_message`; False if the hook failed (the core closes with 1011)."""
        return _guard(self.on_message, conn, message)

    def _leaving(self, conn: Connection) -> None:
        """``conn`` started closing: broadcasts skip it from now on."""
        self._clients.pop(conn, None)

    def _closed(self, conn: Connection, code: int, reason: str) -> None:
        """``conn`` is finished: run :meth:`on_close`."""
        self._clients.pop(conn, None)
        _guard(self.on_close, conn, code, reason)


def _guard(hook: Callable[..., object], *args: object) -> bool:
    """Run a hook; log what it raises (the peer never sees exception text)."""
    try:
        hook(*args)
    except Exception:
        logger.exception("%s raised", getattr(hook, "__qualname__", hook))
        return False
    return True
