"""ChatServer: rooms, presence, history and resume, notifications — over a JSON protocol.

The protocol is documented in ``docs/chat-protocol.rst``. Room state (history, ids,
membership) goes through a :class:`~spoc_sockets.channels.brokers.Broker`, in-process by default,
so several processes or machines can share rooms by giving their chat channels the same
shared broker.

Everything a client can make the server hold is bounded by a named option: rooms per
server and per user, history per room (messages and bytes), how long an empty room's
history is kept, and the size of every field. Every event is encoded once, before it is
stored or sent, so nothing a client sends can break what another client receives.

Built-in channels are applications of the core: unlike the protocol core, they read
clocks, which a test can replace: the wall clock (``clock``) for message timestamps only,
and a monotonic clock (``monotonic_clock``) for the rate limit and room expiry, so a
step of the wall clock (NTP, a resumed machine) neither rate-limits nor expires anyone.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
import time
import unicodedata
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from ..channel import ChannelServer, Connection
from ..errors import CloseCode, Reject, UsageError
from ..limits import Number, check_flag, shown
from ..request import Request
from .brokers import Broker, Done, HistoryPage, RoomsFull
from .brokers.memory import MemoryBroker

__all__ = [
    "USER_NAME",
    "ChatServer",
    "TokenBucket",
    "create_chat_server",
    "dump_json",
    "is_loopback",
    "load_json",
    "notification",
    "room_problem",
    "utf8_size",
]

Event = dict[str, Any]

logger = logging.getLogger("spoc_sockets.channels")

#: the user names ``trust_user_param`` (and the demo) accept: 1 to 32 ASCII letters,
#: digits, ``.``, ``_`` or ``-`` (no look-alike letters of other scripts), not starting
#: with ``guest`` in any case (``guest-<n>`` is the server's own name for guests)
USER_NAME = re.compile(r"(?!(?i:guest))[A-Za-z0-9_.-]{1,32}")

#: largest integer ``ref`` (and ``since``) accepted: the largest a browser keeps exactly
MAX_SAFE_INTEGER = 2**53 - 1


# -- JSON at the door -------------------------------------------------------------------


def load_json(message: str, max_depth: int) -> Event:
    """``message`` as one JSON object nested at most ``max_depth`` levels (the object
    itself is level 1); ``ValueError`` for anything else, whatever went wrong (syntax,
    nesting too deep for the parser, ``NaN``, numbers too long...)."""
    try:
        data = json.loads(message, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, TypeError):
        raise ValueError("a message is one JSON object") from None
    if not isinstance(data, dict):
        raise ValueError("a message is one JSON object")
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > max_depth:
            raise ValueError(f"a message is nested at most {max_depth} levels deep")
        items = container.values() if isinstance(container, dict) else container
        pending.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))
    return data


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def dump_json(obj: object) -> str:
    """``obj`` as compact JSON text that is valid UTF-8; ``ValueError`` if it cannot be
    (a lone surrogate, ``NaN``, a value JSON has no name for, nesting too deep)."""
    try:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text.encode()
    except (ValueError, RecursionError, TypeError):
        raise ValueError("not encodable as JSON text") from None
    return text


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8, what the wire and the limits named ``_bytes`` or
    ``_size`` count (a lone surrogate, refused elsewhere, counts 3)."""
    return len(text.encode("utf-8", "surrogatepass"))


def room_problem(room: object, max_bytes: int) -> str | None:
    """What is wrong with ``room`` as a room name (``None``: nothing): a string of 1 to
    ``max_bytes`` bytes of UTF-8, printable, NFC, without spaces at either end."""
    if not isinstance(room, str) or not room or utf8_size(room) > max_bytes:
        return f"room is a string of 1 to {max_bytes} bytes"
    if not room.isprintable():
        return "room has only printable characters"
    if room != room.strip() or not unicodedata.is_normalized("NFC", room):
        return "room is NFC, without spaces at either end"
    return None


def notification(payload: Any) -> str:
    """The ``notification`` event carrying ``payload``; :class:`UsageError` if the
    payload cannot be encoded as JSON."""
    try:
        return dump_json({"type": "notification", "payload": payload})
    except ValueError:
        raise UsageError(f"the payload is not encodable as JSON: {payload!r:.80}") from None


def missed(what: list[str], room: str | None = None, members: list[str] | None = None) -> str:
    """The ``missed`` event: ``what`` (``messages``, ``presence``, ``notifications``) may
    have been lost, in ``room`` (whose ``members`` are these now, when known) or, without
    one, for the user."""
    event: dict[str, Any] = {"type": "missed", "what": what}
    if room is not None:
        event["room"] = room
    if members is not None:
        event["members"] = members
    return dump_json(event)


def is_loopback(request: Request) -> bool:
    """Whether ``request`` comes straight from this machine: a loopback peer, and no
    proxy header saying it was forwarded for someone else."""
    if request.peer is None or "forwarded" in request.headers:
        return False
    if "x-forwarded-for" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.peer[0]).is_loopback
    except ValueError:
        return False


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; one token per message."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class ProtocolMistake(Exception):
    """A client message the chat refuses: answered with an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _since(data: Event, required: bool) -> int | None:
    since = data.get("since")
    if since is None and not required:
        return None
    if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_SAFE_INTEGER:
        raise ProtocolMistake("bad_field", "since is the id of the last message seen")
    return since


class ChatServer(ChannelServer):
    """Chat rooms over one WebSocket: ``join``, ``leave``, ``post``, ``who``, ``history``.

    Override :meth:`authenticate` (by default everyone is a guest), :meth:`can_join` and
    :meth:`can_post` for the platform's policy.
    """

    max_message_size: int | None = 64 * 1024
    #: messages replayed to a client that joins without ``since``
    replay_messages: int = 50
    #: messages kept per room, for ``since`` (resume after a reconnection)
    max_history_messages: int = 1000
    #: bytes (UTF-8 of the stored events) kept per room; the oldest go first
    max_history_bytes: int = 256 * 1024
    #: most history bytes in one ``joined`` or ``history`` reply (the rest: ask again)
    history_page_bytes: int = 256 * 1024
    #: seconds a room (its history and ids) is kept after its last member left
    empty_room_timeout: float = 600.0
    #: rooms this server holds at once, with members or empty and not yet expired; when
    #: full, a new room frees the room empty the longest (``rooms_full``: all have members)
    max_rooms_per_server: int = 1000
    #: rooms one user may be in at once, over all their connections
    max_rooms_per_user: int = 50
    #: longest ``text`` of a post, in bytes of UTF-8 (longer: error ``too_long``)
    max_text_bytes: int = 4000
    #: longest room name, in bytes of UTF-8
    max_room_name_bytes: int = 100
    #: longest string ``ref``, in bytes of UTF-8
    max_ref_bytes: int = 64
    #: deepest nesting of a client message (1: an object of plain values)
    max_json_depth: int = 1
    #: client messages a second allowed per connection, and the burst allowed
    rate: float = 5.0
    burst: float = 20.0
    #: consecutive rate-limited messages after which the connection is closed (1008)
    max_strikes: int = 20
    #: take the user id from ``?user=``: for tests only, as anyone can claim any name;
    #: refused (403) unless the client connects from loopback, without proxy headers
    trust_user_param: bool = False
    #: where rooms live (``None``: a new in-process MemoryBroker)
    broker: Broker | None = None
    #: the wall clock (seconds since the epoch) for message timestamps (``ts``)
    clock: Callable[[], float] = staticmethod(time.time)
    #: seconds that never go back, for the rate limit and room expiry
    monotonic_clock: Callable[[], float] = staticmethod(time.monotonic)

    RENAMED: ClassVar[dict[str, str]] = {
        "history_size": "replay_messages",
        "max_text_length": "max_text_bytes",
        "max_room_length": "max_room_name_bytes",
        "max_ref_length": "max_ref_bytes",
    }
    NUMBERS: ClassVar[dict[str, Number]] = {
        **ChannelServer.NUMBERS,
        "replay_messages": Number(integer=True, minimum=0),
        "max_history_messages": Number(integer=True),
        "max_history_bytes": Number(integer=True),
        "history_page_bytes": Number(integer=True),
        "empty_room_timeout": Number(integer=False, minimum=0),
        "max_rooms_per_server": Number(integer=True),
        "max_rooms_per_user": Number(integer=True),
        "max_text_bytes": Number(integer=True),
        "max_room_name_bytes": Number(integer=True),
        "max_ref_bytes": Number(integer=True),
        "max_json_depth": Number(integer=True),
        "rate": Number(integer=False, minimum=0),
        "burst": Number(integer=False, minimum=1),
        "max_strikes": Number(integer=True),
    }
    OPTIONS: ClassVar[tuple[str, ...]] = (
        *ChannelServer.OPTIONS,
        *(name for name in NUMBERS if name not in ChannelServer.OPTIONS),
        "trust_user_param",
        "broker",
        "clock",
        "monotonic_clock",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.broker = self.broker if self.broker is not None else MemoryBroker()
        self.broker.attach(self._deliver)
        self._lock = threading.Lock()
        self._rooms: dict[str, set[Connection]] = {}
        self._joined: dict[Connection, set[str]] = {}
        self._users: dict[str, set[Connection]] = {}
        self._buckets: dict[Connection, tuple[TokenBucket, list[int]]] = {}
        self._handlers: dict[str, Callable[[Connection, str, Event], None]] = {
            "join": self._join,
            "leave": self._leave,
            "post": self._post,
            "who": self._who,
            "history": self._history,
        }

    def _check_options(self) -> None:
        super()._check_options()
        if self.history_page_bytes > self.max_buffered_amount // 2:
            raise UsageError(
                f"history_page_bytes ({self.history_page_bytes}) is at most half of "
                f"max_buffered_amount ({self.max_buffered_amount})"
            )
        check_flag("trust_user_param", self.trust_user_param)
        if self.broker is not None and not isinstance(self.broker, Broker):
            raise UsageError(f"broker is a Broker or None, not {shown(self.broker)}")
        for name in ("clock", "monotonic_clock"):
            if not callable(getattr(self, name)):
                value = getattr(self, name)
                raise UsageError(f"{name} is a function returning seconds, not {shown(value)}")

    # -- policy hooks -------------------------------------------------------------------

    def authenticate(self, request: Request) -> object:
        """The user id, or ``None`` for a guest. Override it with the platform's
        authentication: :meth:`notify` reaches whoever is authenticated as that user.

        By default everyone is a guest, unless ``trust_user_param`` is set (tests),
        which takes the id from ``?user=`` (see :data:`USER_NAME`) for clients on this
        machine only: any of them could claim any name."""
        if not self.trust_user_param:
            return None
        if not is_loopback(request):
            raise Reject(403, "?user= is trusted only from loopback clients\n")
        name = request.query.get("user")
        if not name:
            return None
        if not USER_NAME.fullmatch(name):
            rule = "1 to 32 ASCII letters, digits, '.', '_' or '-', not guest..."
            raise Reject(400, f"user is {rule}\n")
        return name

    def can_join(self, conn: Connection, room: str) -> bool:
        """Whether ``conn`` may join ``room`` (default: yes)."""
        return True

    def can_post(self, conn: Connection, room: str, text: str) -> bool:
        """Whether ``conn`` may post ``text`` to ``room`` (default: yes)."""
        return True

    def user_id(self, conn: Connection) -> str:
        """The name under which ``conn`` appears in presence and messages."""
        return str(conn.user) if conn.user is not None else f"guest-{conn.id}"

    # -- server-side API ----------------------------------------------------------------

    def notify(self, user: str, payload: Any) -> None:
        """Send ``payload`` to every connection of ``user``, in every process sharing the
        broker. Safe from any task or thread. :class:`UsageError` if ``payload`` cannot
        be encoded as JSON."""
        assert self.broker is not None
        self.broker.publish(f"user:{user}", notification(payload))

    def expire(self) -> None:
        """Free the rooms empty for ``empty_room_timeout`` seconds. Runs on every client
        message, leave and close, and from a timer when a room is waiting to expire, so
        memory comes back even if nobody ever connects again."""
        assert self.broker is not None
        due = self.broker.expire(self.monotonic_clock(), self.empty_room_timeout)
        if due is not None:
            _EXPIRY.schedule(self, due - self.monotonic_clock())

    # -- connection life ----------------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        assert self.broker is not None
        user = self.user_id(conn)
        with self._lock:
            self._joined[conn] = set()
            self._buckets[conn] = (TokenBucket(self.rate, self.burst, self.monotonic_clock()), [0])
            first = user not in self._users
            self._users.setdefault(user, set()).add(conn)
        if first:
            self.broker.subscribe(f"user:{user}")
        conn.send(dump_json({"type": "welcome", "user": user}))

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        assert self.broker is not None
        user = self.user_id(conn)
        for room in list(self._joined.get(conn, ())):
            self._part(conn, room)
        with self._lock:
            self._joined.pop(conn, None)
            self._buckets.pop(conn, None)
            last = _drop(self._users, user, conn)
        if last:
            self.broker.unsubscribe(f"user:{user}")
        self.expire()

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        ref = None
        try:
            if not self._admit(conn):
                return
            self.expire()
            if not isinstance(message, str):
                raise ProtocolMistake("bad_message", "the chat protocol uses text messages")
            try:
                data = load_json(message, self.max_json_depth)
            except ValueError as exc:
                raise ProtocolMistake("bad_json", str(exc)) from None
            ref = self._ref(data)
            kind = data.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ProtocolMistake("unknown_type", f"unknown type {kind!r:.40}")
            room = data.get("room")
            problem = room_problem(room, self.max_room_name_bytes)
            if problem is not None:
                raise ProtocolMistake("bad_field", problem)
            assert isinstance(room, str)
            handler(conn, room, data)
        except ProtocolMistake as mistake:
            self._error(conn, mistake.code, str(mistake), ref)

    def _ref(self, data: Event) -> str | int | None:
        """The message's ``ref``, checked: echoed in answers, so bounded like the rest."""
        ref = data.get("ref")
        if ref is None:
            return None
        if isinstance(ref, str) and utf8_size(ref) <= self.max_ref_bytes and ref.isprintable():
            return ref
        if isinstance(ref, int) and not isinstance(ref, bool) and abs(ref) <= MAX_SAFE_INTEGER:
            return ref
        limit = self.max_ref_bytes
        raise ProtocolMistake("bad_field", f"ref is an integer or a string of {limit} bytes")

    def _admit(self, conn: Connection) -> bool:
        """The rate limit: False (and an error, or a close) when over it."""
        bucket, strikes = self._buckets[conn]
        if bucket.take(self.monotonic_clock()):
            strikes[0] = 0
            return True
        strikes[0] += 1
        if strikes[0] >= self.max_strikes:
            conn.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
        else:
            self._error(conn, "rate_limited", "too many messages: slow down", None)
        return False

    @staticmethod
    def _error(conn: Connection, code: str, message: str, ref: str | int | None) -> None:
        error: Event = {"type": "error", "code": code, "message": message}
        if ref is not None:
            error["ref"] = ref
        conn.send(dump_json(error))

    # -- the client's requests ----------------------------------------------------------

    def _join(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        broker = self.broker
        since = _since(data, required=False)
        user = self.user_id(conn)
        with self._lock:
            if room in self._joined[conn]:
                raise ProtocolMistake("already_joined", f"already in {room}")
            rooms: set[str] = set()
            rooms.update(*(self._joined.get(c, ()) for c in self._users.get(user, ())))
        if room not in rooms and len(rooms) >= self.max_rooms_per_user:
            limit = self.max_rooms_per_user
            raise ProtocolMistake("too_many_rooms", f"at most {limit} rooms at once")
        if not self.can_join(conn, room):
            raise ProtocolMistake("not_allowed", f"not allowed to join {room}")
        with self._lock:  # a member at once: a leave or a close now undoes the join after it
            self._joined[conn].add(room)
            first_here = room not in self._rooms
            self._rooms.setdefault(room, set()).add(conn)
        if first_here:
            self.broker.subscribe(f"room:{room}")
        ref = data.get("ref")
        count = self.replay_messages if since is None else self.max_history_messages

        def answer(first: bool | Exception, page: HistoryPage | Exception,
                   members: list[str] | Exception) -> None:  # fmt: skip
            if isinstance(first, Exception):
                self._forget(conn, room)
                if isinstance(first, RoomsFull):
                    message = "the server holds all the rooms it can"
                    self._error(conn, "rooms_full", message, ref)
                else:
                    self._unavailable(conn, first, ref)
            elif isinstance(page, HistoryPage) and isinstance(members, list):
                conn.send(_page({"type": "joined", "room": room, "members": members}, page))
                if first:
                    presence = {"type": "presence", "room": room, "user": user, "event": "joined"}
                    broker.publish(f"room:{room}", dump_json(presence))
            else:  # joined, but the reply could not be made: the client is told, and leaves
                self._unavailable(conn, page if isinstance(page, Exception) else members, ref)
                self._part(conn, room)

        gather = _Gather(answer, 3)
        self.broker.join(room, user, self.max_rooms_per_server, gather.slot(0))
        self.broker.history(room, since, count, self.history_page_bytes, gather.slot(1))
        self.broker.members(room, gather.slot(2))

    def _forget(self, conn: Connection, room: str) -> bool:
        """Take ``conn`` out of ``room`` here (unsubscribing when it was the room's last
        connection here); False if it was not in it (a leave or a close came first)."""
        assert self.broker is not None
        with self._lock:
            joined = self._joined.get(conn)
            if joined is None or room not in joined:
                return False
            joined.discard(room)
            empty = _drop(self._rooms, room, conn)
        if empty:
            self.broker.unsubscribe(f"room:{room}")
        return True

    def _history(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        since = _since(data, required=True)
        if room not in self._joined[conn]:
            raise ProtocolMistake("not_joined", f"join {room} before asking for its history")
        ref = data.get("ref")

        def answer(page: HistoryPage | Exception) -> None:
            if isinstance(page, Exception):
                self._unavailable(conn, page, ref)
            else:
                conn.send(_page({"type": "history", "room": room}, page))

        self.broker.history(room, since, self.max_history_messages, self.history_page_bytes, answer)

    def _leave(self, conn: Connection, room: str, data: Event) -> None:
        if room not in self._joined[conn]:
            raise ProtocolMistake("not_joined", f"not in {room}")
        self._part(conn, room)
        conn.send(dump_json({"type": "left", "room": room}))

    def _part(self, conn: Connection, room: str) -> None:
        assert self.broker is not None
        broker = self.broker
        if not self._forget(conn, room):
            return
        user = self.user_id(conn)

        def left(last: bool | Exception) -> None:
            if isinstance(last, Exception):
                logger.warning("leaving %r for %r: %s", room, user, last)
            elif last:
                presence = {"type": "presence", "room": room, "user": user, "event": "left"}
                broker.publish(f"room:{room}", dump_json(presence))

        broker.leave(room, user, self.monotonic_clock(), left)
        self.expire()

    def _post(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolMistake("bad_field", "text is a string")
        if utf8_size(text) > self.max_text_bytes:
            raise ProtocolMistake("too_long", f"text over {self.max_text_bytes} bytes")
        if room not in self._joined[conn]:
            raise ProtocolMistake("not_joined", f"join {room} before posting")
        if not self.can_post(conn, room, text):
            raise ProtocolMistake("not_allowed", f"not allowed to post to {room}")
        message: Event = {"type": "message", "room": room, "user": self.user_id(conn)}
        message.update(text=text, ts=self.clock())
        ref = data.get("ref")
        if ref is not None:
            message["ref"] = ref  # checked by _ref
        try:
            encoded = dump_json(message)  # once: stored, replayed and fanned out as is
        except ValueError:
            raise ProtocolMistake("bad_field", "text is not valid Unicode") from None

        def stored(result: str | Exception) -> None:  # the message event is the acknowledgement
            if isinstance(result, Exception):
                self._unavailable(conn, result, ref)

        self.broker.post(room, encoded, self.max_history_messages, self.max_history_bytes, stored)

    def _who(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        if room not in self._joined[conn]:
            raise ProtocolMistake("not_joined", f"join {room} to see who is there")
        ref = data.get("ref")

        def answer(members: list[str] | Exception) -> None:
            if isinstance(members, Exception):
                self._unavailable(conn, members, ref)
            else:
                conn.send(dump_json({"type": "members", "room": room, "members": members}))

        self.broker.members(room, answer)

    def _unavailable(self, conn: Connection, exc: object, ref: str | int | None) -> None:
        """The answer to a request the broker could not carry out: nothing was done."""
        logger.warning("the chat's broker failed: %s", exc)
        self._error(conn, "unavailable", "the chat's storage is unavailable: try again", ref)

    # -- fan-out from the broker --------------------------------------------------------

    def _deliver(self, topic: str, event: str) -> None:
        kind, _, name = topic.partition(":")
        with self._lock:
            source = self._rooms if kind == "room" else self._users
            recipients = list(source.get(name, ()))
        if recipients:
            self.broadcast(event, to=recipients)


class _ExpiryTimer:
    """One daemon thread for every chat of the process: runs ``chat.expire()`` when a
    room is due, so an idle server frees its rooms too. It keeps no chat alive."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: dict[weakref.ref[ChatServer], float] = {}  # chat -> monotonic time
        self._thread: threading.Thread | None = None

    def schedule(self, chat: ChatServer, delay: float) -> None:
        """Run ``chat.expire()`` in ``delay`` seconds (or sooner, if already asked)."""
        when = time.monotonic() + max(delay, 0.0)
        with self._wake:
            chat_ref = weakref.ref(chat)
            if self._due.get(chat_ref, when + 1) <= when:
                return
            self._due[chat_ref] = when
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="spoc-chat-expiry")
                self._thread.daemon = True
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                ready = [chat for chat, when in self._due.items() if when <= now]
                for chat in ready:
                    del self._due[chat]
                if not ready:
                    self._wake.wait(min(self._due.values()) - now if self._due else None)
                    continue
            for chat in ready:
                server = chat()
                try:
                    if server is not None:
                        server.expire()
                except Exception:  # a broker's fault: the timer lives on for the others
                    logger.exception("expiring the rooms of %r failed", server)


_EXPIRY = _ExpiryTimer()


def _drop(index: dict[str, set[Connection]], key: str, conn: Connection) -> bool:
    """Take ``conn`` out of ``index[key]``; True (and the key gone) if none is left."""
    conns = index.get(key, set())
    conns.discard(conn)
    if conns:
        return False
    index.pop(key, None)
    return True


class _Gather:
    """Calls ``answer`` with the results of ``count`` broker operations, once all are done
    (in whatever thread completes the last)."""

    def __init__(self, answer: Callable[..., None], count: int) -> None:
        self._answer = answer
        self._results: list[object] = [None] * count
        self._left = count
        self._lock = threading.Lock()

    def slot(self, index: int) -> Done[Any]:
        def done(result: object) -> None:
            with self._lock:
                self._results[index] = result
                self._left -= 1
                ready = self._left == 0
            if ready:
                self._answer(*self._results)

        return done


def _page(head: Event, page: HistoryPage) -> str:
    """A reply carrying a page of history: the stored texts are spliced in, not
    decoded and encoded again."""
    head = {**head, "complete": page.complete, "more": page.more}
    return f'{dump_json(head)[:-1]},"history":[{",".join(page.messages)}]}}'


def create_chat_server(**options: Any) -> ChatServer:
    """The Node module's name (``createChatWSS``): a :class:`ChatServer` with these options."""
    return ChatServer(**options)
