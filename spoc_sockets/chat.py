"""ChatServer: rooms, presence, history and resume, notifications — over a JSON protocol.

The protocol is documented in ``docs/chat-protocol.rst``. Room state (history, ids,
membership) goes through a :class:`~spoc_sockets.brokers.Broker`, in-process by default,
so several processes or machines can share rooms by giving their chat channels the same
shared broker.

Built-in channels are applications of the core: unlike the protocol core, they read a
wall clock (for message timestamps and the rate limit), through the ``clock`` option a
test can replace.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .brokers import Broker, Event
from .brokers.memory import MemoryBroker
from .channel import ChannelServer, Connection
from .errors import CloseCode
from .request import Request

__all__ = ["ChatServer", "TokenBucket", "create_chat_server"]


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


def _encode(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


class ProtocolMistake(Exception):
    """A client message the chat refuses: answered with an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChatServer(ChannelServer):
    """Chat rooms over one WebSocket: ``join``, ``leave``, ``post``, ``who``.

    Override :meth:`authenticate` (by default everyone is a guest), :meth:`can_join` and
    :meth:`can_post` for the platform's policy.
    """

    max_message_size: int | None = 64 * 1024
    #: messages replayed to a client that joins without ``since``
    history_size: int = 50
    #: messages kept per room, for ``since`` (resume after a reconnection)
    retention: int = 1000
    #: longest ``text`` of a post, in characters (longer: error ``too_long``)
    max_text_length: int = 4000
    #: client messages a second allowed per connection, and the burst allowed
    rate: float = 5.0
    burst: float = 20.0
    #: consecutive rate-limited messages after which the connection is closed (1008)
    max_strikes: int = 20
    #: rooms one connection may be in at once (one more: error ``too_many_rooms``)
    max_rooms: int = 50
    #: take the user id from ``?user=`` (for demos and tests only: anyone can claim it)
    trust_user_param: bool = False
    #: where rooms live (``None``: a new in-process MemoryBroker)
    broker: Broker | None = None
    #: the wall clock (seconds since the epoch) for timestamps and the rate limit
    clock: Callable[[], float] = staticmethod(time.time)

    OPTIONS: ClassVar[tuple[str, ...]] = (
        *ChannelServer.OPTIONS,
        "history_size",
        "retention",
        "max_text_length",
        "rate",
        "burst",
        "max_strikes",
        "max_rooms",
        "trust_user_param",
        "broker",
        "clock",
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
        }

    # -- policy hooks -------------------------------------------------------------------

    def authenticate(self, request: Request) -> object:
        """The user id, or ``None`` for a guest. Override it with the platform's
        authentication: :meth:`notify` reaches whoever is authenticated as that user.

        By default everyone is a guest, unless ``trust_user_param`` is set (demos and
        tests), which takes the id from ``?user=``: any client could claim any name."""
        if self.trust_user_param:
            return request.query.get("user") or None
        return None

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
        broker. Safe from any task or thread."""
        assert self.broker is not None
        self.broker.publish(f"user:{user}", {"type": "notification", "payload": payload})

    # -- connection life ----------------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        assert self.broker is not None
        user = self.user_id(conn)
        with self._lock:
            self._joined[conn] = set()
            self._buckets[conn] = (TokenBucket(self.rate, self.burst, self.clock()), [0])
            first = user not in self._users
            self._users.setdefault(user, set()).add(conn)
        if first:
            self.broker.subscribe(f"user:{user}")
        conn.send_json({"type": "welcome", "user": user})

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        assert self.broker is not None
        user = self.user_id(conn)
        for room in list(self._joined.get(conn, ())):
            self._part(conn, room)
        with self._lock:
            self._joined.pop(conn, None)
            self._buckets.pop(conn, None)
            conns = self._users.get(user, set())
            conns.discard(conn)
            last = not conns
            if last:
                self._users.pop(user, None)
        if last:
            self.broker.unsubscribe(f"user:{user}")

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        ref = None
        try:
            if not self._admit(conn):
                return
            if not isinstance(message, str):
                raise ProtocolMistake("bad_message", "the chat protocol uses text messages")
            try:
                data = json.loads(message)
            except ValueError:
                raise ProtocolMistake("bad_json", "a message is one JSON object") from None
            if not isinstance(data, dict):
                raise ProtocolMistake("bad_json", "a message is one JSON object")
            ref = data.get("ref")
            handler = self._handlers.get(data.get("type"))  # type: ignore[arg-type]
            if handler is None:
                raise ProtocolMistake("unknown_type", f"unknown type {data.get('type')!r}")
            room = data.get("room")
            if not isinstance(room, str) or not 0 < len(room) <= 100:
                raise ProtocolMistake("bad_field", "room is a string of 1 to 100 characters")
            handler(conn, room, data)
        except ProtocolMistake as mistake:
            self._error(conn, mistake.code, str(mistake), ref)

    def _admit(self, conn: Connection) -> bool:
        """The rate limit: False (and an error, or a close) when over it."""
        bucket, strikes = self._buckets[conn]
        if bucket.take(self.clock()):
            strikes[0] = 0
            return True
        strikes[0] += 1
        if strikes[0] >= self.max_strikes:
            conn.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
        else:
            self._error(conn, "rate_limited", "too many messages: slow down", None)
        return False

    @staticmethod
    def _error(conn: Connection, code: str, message: str, ref: Any) -> None:
        error: Event = {"type": "error", "code": code, "message": message}
        if ref is not None:
            error["ref"] = ref
        conn.send_json(error)

    # -- the client's requests ----------------------------------------------------------

    def _join(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        since = data.get("since")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise ProtocolMistake("bad_field", "since is the id of the last message seen")
        if room in self._joined[conn]:
            raise ProtocolMistake("already_joined", f"already in {room}")
        if len(self._joined[conn]) >= self.max_rooms:
            raise ProtocolMistake("too_many_rooms", f"at most {self.max_rooms} rooms at once")
        if not self.can_join(conn, room):
            raise ProtocolMistake("not_allowed", f"not allowed to join {room}")
        with self._lock:
            self._joined[conn].add(room)
            first_here = room not in self._rooms
            self._rooms.setdefault(room, set()).add(conn)
        if first_here:
            self.broker.subscribe(f"room:{room}")
        if since is None:
            history, complete = self.broker.recent(room, self.history_size), True
        else:
            history, complete = self.broker.since(room, since)
        first_of_user = self.broker.join(room, self.user_id(conn))
        reply = {"type": "joined", "room": room, "members": self.broker.members(room)}
        conn.send_json({**reply, "history": history, "complete": complete})
        if first_of_user:
            presence = {"type": "presence", "room": room, "user": self.user_id(conn)}
            self.broker.publish(f"room:{room}", {**presence, "event": "joined"})

    def _leave(self, conn: Connection, room: str, data: Event) -> None:
        if room not in self._joined[conn]:
            raise ProtocolMistake("not_joined", f"not in {room}")
        self._part(conn, room)
        conn.send_json({"type": "left", "room": room})

    def _part(self, conn: Connection, room: str) -> None:
        assert self.broker is not None
        with self._lock:
            self._joined[conn].discard(room)
            members = self._rooms.get(room, set())
            members.discard(conn)
            empty = not members
            if empty:
                self._rooms.pop(room, None)
        if self.broker.leave(room, self.user_id(conn)):
            presence = {"type": "presence", "room": room, "user": self.user_id(conn)}
            self.broker.publish(f"room:{room}", {**presence, "event": "left"})
        if empty:
            self.broker.unsubscribe(f"room:{room}")

    def _post(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolMistake("bad_field", "text is a string")
        if len(text) > self.max_text_length:
            raise ProtocolMistake("too_long", f"text over {self.max_text_length} characters")
        if room not in self._joined[conn]:
            raise ProtocolMistake("not_joined", f"join {room} before posting")
        if not self.can_post(conn, room, text):
            raise ProtocolMistake("not_allowed", f"not allowed to post to {room}")
        message: Event = {"type": "message", "room": room, "user": self.user_id(conn)}
        message.update(text=text, ts=self.clock())
        if data.get("ref") is not None:
            message["ref"] = data["ref"]
        self.broker.publish(f"room:{room}", self.broker.append(room, message, self.retention))

    def _who(self, conn: Connection, room: str, data: Event) -> None:
        assert self.broker is not None
        conn.send_json({"type": "members", "room": room, "members": self.broker.members(room)})

    # -- fan-out from the broker --------------------------------------------------------

    def _deliver(self, topic: str, event: Event) -> None:
        kind, _, name = topic.partition(":")
        with self._lock:
            source = self._rooms if kind == "room" else self._users
            recipients = list(source.get(name, ()))
        if recipients:
            self.broadcast(_encode(event), to=recipients)


def create_chat_server(**options: Any) -> ChatServer:
    """The seed's name: a :class:`ChatServer` with these options."""
    return ChatServer(**options)
