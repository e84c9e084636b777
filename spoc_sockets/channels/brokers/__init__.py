"""Brokers: where chat room state lives and how its events fan out.

:class:`Broker` is the seam between :class:`~spoc_sockets.channels.chat.ChatServer` and its
storage. :class:`~spoc_sockets.channels.brokers.memory.MemoryBroker` (the default) keeps everything
in this process; :class:`~spoc_sockets.channels.brokers.redis.RedisBroker` shares rooms across
processes and machines without any change to the channel.

Events travel as JSON text, encoded once by the channel before they are stored or
published: history replays and fan-out reuse that text, and a broker never encodes.
Every bound the channel applies is an argument, so a broker keeps the same bounds
whatever its storage.

An operation that may need a round trip to the storage never makes its caller wait: it
takes a ``done`` callback, called once with the result or with the exception that made
the operation fail (:class:`BrokerUnavailable`, :class:`RoomsFull`). The in-process broker
calls it before returning; a broker on a server calls it later, from its own thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "Deliver",
    "Done",
    "HistoryPage",
    "Kept",
    "MediaBroker",
    "MediaDeliver",
    "RoomsFull",
]

T = TypeVar("T")

#: ``deliver(topic, event)``: called with the JSON text of every event published on a
#: subscribed topic, in every process, from whatever thread the broker delivers on.
Deliver = Callable[[str, str], None]

#: ``deliver(stream_id, media)``: called with the raw bytes of every media message of a
#: subscribed stream published by another process; ``b""`` when the stream's publisher
#: left (the stream ended); ``None`` when media may have been missed (the subscription
#: connection was made again): its viewers restart at the next key frame.
MediaDeliver = Callable[[str, bytes | None], None]

#: ``done(result)``: called once with an operation's result, or with the exception that
#: made it fail, from whatever thread the broker completes on.
Done = Callable[[T | Exception], None]


class RoomsFull(Exception):
    """A ``join`` would create a room while the broker holds ``max_rooms`` rooms, every
    one of them with members."""


class BrokerUnavailable(Exception):
    """The broker could not do the operation (its storage is unreachable, or too many
    operations are waiting): nothing was stored; the caller may try again."""


@dataclass(frozen=True)
class HistoryPage:
    """Stored messages (JSON text, oldest first), as :meth:`Broker.history` returns them.

    ``complete`` is False when messages the client asked for were lost (older than what
    is retained, or the room was freed since the client's ``since``); ``more`` is True
    when messages after this page remain (ask again with ``since`` = the last id of this
    page).
    """

    messages: list[str]
    complete: bool = True
    more: bool = False


@dataclass(frozen=True)
class Kept:
    """What a stream keeps for a late viewer, as :meth:`MediaBroker.kept` returns it:
    whether some process publishes it, its init segment and its latest key frame."""

    live: bool
    init: bytes | None = None
    key: bytes | None = None


class Broker(ABC):
    """Room history, membership and publish/subscribe for chat channels.

    Topics are strings: ``"room:<name>"`` for a room's events and ``"user:<id>"`` for
    direct notifications. Every method may be called from any thread, and none waits on
    the network: :meth:`subscribe`, :meth:`unsubscribe` and :meth:`publish` take effect
    in the background; the operations with a result complete through ``done``, in the
    order they were called.

    Times (``now``) are the chat's monotonic clock, in seconds: they are compared with
    each other in one process only (a broker shared by processes expires rooms by its own
    clock). A room exists from its first ``join``; once it has no members it is *empty*, and
    :meth:`expire` frees it (history and all) when it stayed empty long enough. Ids
    never restart: a room made after a room was freed numbers its messages past every id
    the freed room gave, and its pages are not ``complete`` for a ``since`` before that.
    """

    @abstractmethod
    def attach(self, deliver: Deliver) -> None:
        """Register the callback that receives events of subscribed topics."""

    @abstractmethod
    def subscribe(self, topic: str) -> None:
        """Start delivering ``topic``'s events to this process (counted: channels that
        share a broker each subscribe, and it stops after as many :meth:`unsubscribe`)."""

    @abstractmethod
    def unsubscribe(self, topic: str) -> None:
        """One :meth:`subscribe` less: the last one stops ``topic``'s events."""

    @abstractmethod
    def publish(self, topic: str, event: str) -> None:
        """Deliver ``event`` (JSON text) to every process subscribed to ``topic``."""

    @abstractmethod
    def post(
        self, room: str, message: str, max_messages: int, max_bytes: int, done: Done[str]
    ) -> None:
        """Store a room message (the JSON text of an object without ``id``) and publish it
        on ``"room:<room>"``: give it the room's next ``id``, keep at most the last
        ``max_messages`` messages and ``max_bytes`` bytes of UTF-8, and call ``done`` with
        the stored text (with its ``id``) once it is stored. Subscribers get the stored
        text once, through their ``deliver``, in the order of the ids."""

    @abstractmethod
    def history(
        self, room: str, since: int | None, max_messages: int, max_bytes: int,
        done: Done[HistoryPage],
    ) -> None:  # fmt: skip
        """One page of ``room``'s history, at most ``max_bytes`` bytes of UTF-8 (but at
        least one message, so paging always moves on).

        ``since=None``: the last ``max_messages`` messages that fit. Otherwise the
        messages after ``since``, oldest first, up to ``max_messages``."""

    @abstractmethod
    def join(self, room: str, user: str, max_rooms: int, done: Done[bool]) -> None:
        """Count one more connection of ``user`` in ``room``; True if it is the user's
        first (in every process sharing the broker).

        When ``room`` does not exist and ``max_rooms`` rooms do, the room empty the
        longest is freed to make place; :class:`RoomsFull` when every room has members."""

    @abstractmethod
    def leave(self, room: str, user: str, now: float, done: Done[bool]) -> None:
        """Count one connection less; True if it was the user's last in the room.
        A room left empty at ``now`` is freed by :meth:`expire` later (at once if it
        holds no history)."""

    @abstractmethod
    def members(self, room: str, done: Done[list[str]]) -> None:
        """The users present in ``room``, sorted."""

    @abstractmethod
    def expire(self, now: float, after: float) -> float | None:
        """Free every room that has been empty for ``after`` seconds or more at ``now``;
        return when the next empty room will be due, or ``None`` if none is waiting (or
        the storage expires rooms by itself). Never waits on the network."""

    @abstractmethod
    def room_count(self) -> int:
        """How many rooms this broker holds (with members, or empty and not yet expired).
        Never waits on the network."""


class MediaBroker(ABC):
    """Streams shared by processes: one publisher (on any process) and viewers on every
    process. Media travels as raw bytes; topics are ``"stream:<id>"``. As with
    :class:`Broker`, nothing here waits on the network.
    """

    @abstractmethod
    def attach_media(self, deliver: MediaDeliver) -> None:
        """Register the callback that receives media of subscribed streams."""

    @abstractmethod
    def subscribe(self, topic: str) -> None:
        """Start delivering ``topic``'s events to this process (counted: as many
        :meth:`unsubscribe` as subscribe calls stop it)."""

    @abstractmethod
    def unsubscribe(self, topic: str) -> None:
        """One :meth:`subscribe` less."""

    @abstractmethod
    def claim(self, stream: str, done: Done[bool]) -> None:
        """Become the publisher of ``stream`` (True), unless another process is (False)."""

    @abstractmethod
    def release(self, stream: str) -> None:
        """This process publishes ``stream`` no more: its kept media is dropped, and
        every subscribed process is told it ended."""

    @abstractmethod
    def publish_media(self, stream: str, media: bytes, keep: bool) -> None:
        """Deliver ``media`` (a message of the stream protocol) to every other process
        subscribed to ``stream``; ``keep``: keep it for late viewers (an init segment,
        or the latest key frame)."""

    @abstractmethod
    def kept(self, stream: str, done: Done[Kept]) -> None:
        """What ``stream`` keeps for a late viewer; call it once subscribed, so nothing
        published after it is missed."""


def fit(entries: Iterable[tuple[T, int]], max_bytes: int) -> list[T]:
    """The items of ``entries`` (item, size in bytes), in order, while their sizes fit in
    ``max_bytes`` (the first always does: paging moves on)."""
    page: list[T] = []
    total = 0
    for item, size in entries:
        if page and total + size > max_bytes:
            break
        page.append(item)
        total += size
    return page
