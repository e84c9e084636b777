"""Channels and their connections: what application code subclasses and holds.

* :class:`ChannelServer` is subclassed once per channel: hooks plus documented options.
* :class:`Connection` is the handle its hooks receive for each upgraded client.
* :class:`Deferred` lets :meth:`ChannelServer.authenticate` decide later.

Nothing here frames, parses or writes: :meth:`Connection.send` only queues the message
for the transport that owns the connection (see :class:`~spoc_sockets.ServerConnection`),
which is why it is safe from any task or thread.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypedDict,
    TypeVar,
    cast,
)

from ._frames import OP_BINARY, OP_TEXT, frame_header
from .errors import CloseCode, Reject, UsageError
from .limits import Number, check_flag, check_numbers, shown
from .request import Request

if TYPE_CHECKING:
    from typing_extensions import TypeVar as DefaultTypeVar
    from typing_extensions import Unpack

    #: The principal's type: what ``authenticate`` returns, :attr:`Connection.user`.
    U = DefaultTypeVar("U", default=object)
else:
    U = TypeVar("U")

__all__ = [
    "ChannelOptions",
    "ChannelServer",
    "Connection",
    "ConnectionState",
    "Deferred",
    "Origins",
    "Outgoing",
    "Subprotocols",
]

#: Errors of application code: hooks and HTTP routes (with their traceback).
logger = logging.getLogger("spoc_sockets.hooks")

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
    #: bytes on the wire (header and payload), what the output limit counts
    size: int

    @classmethod
    def build(cls, message: Message) -> Outgoing:
        if isinstance(message, str):
            payload, opcode = message.encode(), OP_TEXT
        else:
            payload, opcode = message, OP_BINARY
        header = frame_header(opcode, len(payload))
        return cls(message, header, payload, len(header) + len(payload))


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


class Connection(Generic[U]):
    """One upgraded client of a channel, as the channel's hooks see it.

    Generic in the principal's type: in a ``ChannelServer[User]``, hooks receive a
    ``Connection[User]`` whose :attr:`user` is a ``User``.

    :meth:`send`, :meth:`send_json` and :meth:`close` may be called from any task or
    thread: they queue, and the adapter that owns the transport writes. A message sent
    after the connection started closing is discarded, as a browser's WebSocket does.
    """

    __slots__ = (
        "__weakref__",
        "_link",
        "bytes_in",
        "bytes_out",
        "channel",
        "dropped",
        "id",
        "messages_in",
        "messages_out",
        "opened_at",
        "request",
        "route",
        "subprotocol",
        "user",
    )

    def __init__(
        self,
        link: Link,
        channel: ChannelServer[U],
        request: Request,
        user: U,
        subprotocol: str | None,
        route: str = "",
        opened_at: float = 0.0,
    ) -> None:
        self._link = link
        #: the path the channel is registered at (``/stream/{stream_id}``)
        self.route = route
        #: when the handshake was accepted (the core's clock)
        self.opened_at = opened_at
        #: messages and payload bytes received from the client, and queued for it
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
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
#: The types ``origins`` takes: a collection, never a plain ``str``.
Origins = tuple[str | None, ...] | list[str] | list[str | None] | set[str] | frozenset[str | None]
#: The types ``subprotocols`` takes: a sequence, never a plain ``str``.
Subprotocols = tuple[str, ...] | list[str]


class ChannelOptions(TypedDict, total=False):
    """The keyword arguments of :class:`ChannelServer` (its options, documented there)."""

    max_message_size: int | None
    max_fragments: int | None
    origins: Origins | None
    subprotocols: Subprotocols
    compression: bool
    ping_interval: float | None
    ping_timeout: float | None
    close_timeout: float
    idle_timeout: float | None
    max_control_rate: float | None
    max_connections: int | None
    max_buffered_amount: int
    overflow: Overflow


class ChannelServer(Generic[U]):
    """Base class of a channel: override the hooks, set the options.

    Generic in the principal's type (``ChannelServer[User]``: ``authenticate`` returns a
    ``User`` and every hook's ``conn.user`` is one); a plain ``ChannelServer`` is
    ``ChannelServer[object]``.

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
    #: Most frames one message may arrive in (a message and its continuation frames);
    #: more closes with 1009. ``None`` means no limit.
    max_fragments: int | None = 1024
    #: Allowed ``Origin`` values, compared exactly (ASCII case-insensitively), e.g.
    #: ``("https://learn.example.com",)``; ``None`` allows any. Put ``None`` in the
    #: collection to allow clients that send no Origin (non-browser clients). Refused
    #: with HTTP 403. A plain string is refused with :class:`UsageError`: write a tuple.
    origins: Origins | None = None
    #: Subprotocols this channel speaks, preferred first. When the client offers some
    #: and none is here, the handshake is refused with HTTP 400. A plain string is
    #: refused with :class:`UsageError`: write a tuple.
    subprotocols: Subprotocols = ()
    #: Accept permessage-deflate (RFC 7692) when the client offers it.
    compression: bool = False
    #: Seconds between keepalive pings; ``None`` disables them.
    ping_interval: float | None = 20.0
    #: Seconds to wait for the pong; past it the connection closes with 1011.
    ping_timeout: float | None = 20.0
    #: Seconds to wait for the peer's close frame after sending ours.
    close_timeout: float = 10.0
    #: Seconds without a message from the client before the connection is closed with
    #: 1001 ``"idle timeout"`` (pings and pongs do not count); ``None`` means never.
    idle_timeout: float | None = None
    #: Ping and pong frames a client may send per second, counted over 10-second
    #: windows; more closes with 1008. ``None`` means no limit.
    max_control_rate: float | None = 10.0
    #: Most open connections this channel holds; more are refused with HTTP 503.
    #: ``None`` means no limit.
    max_connections: int | None = None
    #: Most bytes queued for one client before ``overflow`` applies.
    max_buffered_amount: int = 4 * 2**20
    #: What happens to a message that would exceed ``max_buffered_amount``:
    #: ``"close"`` closes the connection with 1008, ``"drop"`` discards the message
    #: (counted in :attr:`Connection.dropped`).
    overflow: Overflow = "close"

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "max_message_size",
        "max_fragments",
        "origins",
        "subprotocols",
        "compression",
        "ping_interval",
        "ping_timeout",
        "close_timeout",
        "idle_timeout",
        "max_control_rate",
        "max_connections",
        "max_buffered_amount",
        "overflow",
    )
    #: Options renamed while the version is 0.x: the old name and the new one. The old
    #: name is refused, as a keyword or a class attribute, with :class:`UsageError`.
    RENAMED: ClassVar[dict[str, str]] = {}
    #: The numeric options and what each takes (checked at construction).
    NUMBERS: ClassVar[dict[str, Number]] = {
        "max_message_size": Number(integer=True, optional=True),
        "max_fragments": Number(integer=True, optional=True),
        "ping_interval": Number(integer=False, optional=True),
        "ping_timeout": Number(integer=False, optional=True),
        "close_timeout": Number(integer=False),
        "idle_timeout": Number(integer=False, optional=True),
        "max_control_rate": Number(integer=False, optional=True),
        "max_connections": Number(integer=True, optional=True),
        "max_buffered_amount": Number(integer=True),
    }
    #: The hooks (``async def`` is allowed for the first four where the server awaits
    #: them: see :func:`check_hooks`).
    HOOKS: ClassVar[tuple[str, ...]] = (
        "authenticate",
        "on_connect",
        "on_message",
        "on_close",
        "check_origin",
        "select_subprotocol",
    )

    _allowed: frozenset[str | None] | None  # origins, as check_origin looks them up

    def __init__(self, **options: Unpack[ChannelOptions]) -> None:
        for name, value in options.items():
            if name not in self.OPTIONS:
                raise UsageError(f"{type(self).__name__} has no option {name!r}{self._hint(name)}")
            setattr(self, name, value)
        self._check_options()
        self._clients: dict[Connection[U], None] = {}
        self._admitted = 0  # open connections and handshakes under way (Router.admit)

    def _check_options(self) -> None:
        """Refuse option values that would misbehave, naming the option and the value.

        A subclass with options of its own adds its numbers to :attr:`NUMBERS` and its
        other checks here (calling this one first)."""
        for old in self.RENAMED:
            if hasattr(type(self), old):
                raise UsageError(f"{type(self).__name__}.{old} is not an option{self._hint(old)}")
        check_numbers(self, type(self).NUMBERS)
        check_flag("compression", self.compression)
        if self.overflow not in ("close", "drop"):
            raise UsageError(f"overflow is 'close' or 'drop', not {shown(self.overflow)}")
        self._allowed = _check_origins(self.origins)
        self.subprotocols = _check_subprotocols(self.subprotocols)

    def _hint(self, name: str) -> str:
        """What an unknown option name was probably meant to be."""
        if name in self.RENAMED:
            return f" (renamed {self.RENAMED[name]!r})"
        close = difflib.get_close_matches(name, self.OPTIONS, n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    # -- hooks ----------------------------------------------------------------------

    def authenticate(self, request: Request) -> U | Deferred | Awaitable[U]:
        """Decide whether ``request`` may connect.

        Return the principal (available as :attr:`Connection.user`), raise
        :class:`~spoc_sockets.Reject` to refuse with an HTTP status, or return a
        :class:`Deferred` and decide later; ``async def`` is awaited where the server
        runs coroutines. The default accepts everyone as ``None`` (a channel typed with
        a principal, ``ChannelServer[User]``, overrides it).
        """
        return cast("U", None)

    def on_connect(self, conn: Connection[U]) -> Awaitable[None] | None:
        """Called once the handshake succeeded; ``conn`` is now in :attr:`clients`."""
        return None

    def on_message(self, conn: Connection[U], message: str | bytes) -> Awaitable[None] | None:
        """Called for every complete message: ``str`` for text, ``bytes`` for binary."""
        return None

    def on_close(self, conn: Connection[U], code: int, reason: str) -> Awaitable[None] | None:
        """Called once when the connection ends (1006 if the transport was lost)."""
        return None

    # -- negotiation ----------------------------------------------------------------

    def check_origin(self, request: Request) -> None:
        """Raise :class:`Reject` (403) unless :attr:`origins` allows the request."""
        if self._allowed is None:
            return
        origin = request.origin
        if (origin.lower() if origin is not None else None) not in self._allowed:
            raise Reject(403, "origin not allowed" if origin else "an Origin header is required")

    def select_subprotocol(self, request: Request) -> str | None:
        """Pick the subprotocol (this channel's preference wins), or raise Reject(400)."""
        if not self.subprotocols:  # the offer is not read: nothing to choose from
            return None
        offered = request.subprotocols
        if not offered:
            return None
        for protocol in self.subprotocols:
            if protocol in offered:
                return protocol
        raise Reject(400, f"none of the subprotocols {', '.join(offered)} is supported")

    # -- fan-out --------------------------------------------------------------------

    @property
    def clients(self) -> frozenset[Connection[U]]:
        """The open connections of this channel (a snapshot)."""
        return frozenset(self._clients)

    def broadcast(
        self,
        message: str | bytes,
        exclude: Connection[U] | Collection[Connection[U]] = (),
        to: Iterable[Connection[U]] | None = None,
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

        The decision is the user, a :class:`Deferred`, or an awaitable (an ``async def``
        ``authenticate``) of what :func:`verdict` then judges; a refusal raises
        :class:`Reject`.
        """
        self.check_origin(request)
        subprotocol = self.select_subprotocol(request)
        decision = self.authenticate(request)
        if decision is None:  # the default: everyone, as None
            return subprotocol, None
        if isinstance(decision, Deferred) or inspect.isawaitable(decision):
            return subprotocol, decision
        return subprotocol, verdict(decision)[0]

    def _opened(self, conn: Connection[U]) -> Outcome:
        """Register ``conn`` and run :meth:`on_connect`."""
        self._clients[conn] = None
        return _call(self.on_connect, conn)

    def _received(self, conn: Connection[U], message: Message) -> Outcome:
        """Run :meth:`on_message` (a failure closes the connection with 1011)."""
        return _call(self.on_message, conn, message)

    def _leaving(self, conn: Connection[U]) -> None:
        """``conn`` started closing: broadcasts skip it from now on."""
        self._clients.pop(conn, None)

    def _closed(self, conn: Connection[U], code: int, reason: str) -> Outcome:
        """``conn`` is finished: run :meth:`on_close`."""
        self._clients.pop(conn, None)
        return _call(self.on_close, conn, code, reason)


#: What running a hook gave: True (done), False (it raised: logged), or the awaitable an
#: ``async def`` hook returned, for the adapter to run (see :func:`settle`).
Outcome = bool | Awaitable[object]


def _call(hook: Callable[..., object], *args: object) -> Outcome:
    """Run a hook; log what it raises (the peer never sees exception text)."""
    try:
        result = hook(*args)
    except Exception:
        logger.exception("%s raised", _name(hook))
        return False
    if result is None or not inspect.isawaitable(result):  # None: the common case, at once
        return True
    return result


def verdict(decision: object) -> tuple[object]:
    """What ``authenticate`` returned, as the principal (in a 1-tuple); a returned
    :class:`Reject` is raised, and ``False`` refuses with 403, as raising would."""
    if isinstance(decision, Reject):
        raise decision
    if decision is False:
        raise Reject(403, "forbidden")
    if inspect.isawaitable(decision):
        discard(decision)
        raise UsageError("authenticate returned an awaitable from its awaitable")
    return (decision,)


async def settle(awaitable: Awaitable[object], done: Callable[[bool, object], None]) -> None:
    """Await a hook's awaitable for an adapter that runs coroutines, then call
    ``done(True, result)``, or ``done(False, exception)`` if it raised (logged unless it
    is a :class:`Reject`). A cancellation (the server stopping) reports a failure too."""
    try:
        result = await awaitable
    except Reject as reject:
        done(False, reject)
    except Exception as exc:
        logger.exception("an async hook raised")
        done(False, exc)
    except BaseException as exc:  # cancelled: the connection must not wait for ever
        done(False, exc)
        raise
    else:
        done(True, result)


#: How an adapter that runs coroutines takes one from the core (``None``: it cannot);
#: it returns a function that cancels the coroutine.
Spawn = Callable[[Coroutine[object, None, None]], Callable[[], object]]


_ASYNC_HINT = (
    "this server runs hooks as plain functions (def, not async def): serve the router "
    "with the asyncio or trio adapter, ASGIApp or TestClient to await them, or start the "
    "I/O from a plain hook and send from its callback, or defer a handshake with Deferred"
)


def _name(hook: Callable[..., object]) -> str:
    return str(getattr(hook, "__qualname__", hook))


def discard(awaitable: object) -> None:
    """Close a coroutine that will never be awaited (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def check_hooks(channel: ChannelServer, *, awaited: bool) -> None:
    """Raise :class:`UsageError` for an ``async def`` hook that would never run:
    ``check_origin`` and ``select_subprotocol`` always, the others unless ``awaited``
    (the server runs coroutines)."""
    for name in ChannelServer.HOOKS:
        hook = getattr(channel, name)
        if not (inspect.iscoroutinefunction(hook) or inspect.isasyncgenfunction(hook)):
            continue
        if name in ("check_origin", "select_subprotocol"):
            raise UsageError(f"{type(channel).__name__}.{name} is async def: it must be a def")
        if not awaited or inspect.isasyncgenfunction(hook):
            raise UsageError(f"{type(channel).__name__}.{name} is async def: {_ASYNC_HINT}")


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", re.ASCII)


def _check_origins(origins: object) -> frozenset[str | None] | None:
    """``origins`` as the set :meth:`ChannelServer.check_origin` looks up (lower case)."""
    if origins is None:
        return None
    if isinstance(origins, (str, bytes)) or not isinstance(origins, Collection):
        raise UsageError(f"origins is a collection such as a tuple, not {shown(origins)}")
    allowed: set[str | None] = set()
    for origin in origins:
        if origin is not None and not (
            isinstance(origin, str) and _ORIGIN.fullmatch(origin.lower())
        ):
            example = "like 'https://host:port' (no path)"
            raise UsageError(f"origins: {shown(origin)} is not an origin {example}")
        allowed.add(origin.lower() if origin is not None else None)
    return frozenset(allowed)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_subprotocols(subprotocols: object) -> tuple[str, ...]:
    if isinstance(subprotocols, (str, bytes)) or not isinstance(subprotocols, Sequence):
        raise UsageError(f"subprotocols is a sequence such as a tuple, not {shown(subprotocols)}")
    for protocol in subprotocols:
        if not isinstance(protocol, str) or not _TOKEN.fullmatch(protocol):
            raise UsageError(f"subprotocols: {shown(protocol)} is not a subprotocol name (a token)")
    return tuple(subprotocols)
