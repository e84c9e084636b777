"""Brokers: where chat room state lives and how its events fan out.

:class:`Broker` is the seam between :class:`~spoc_sockets.chat.ChatServer` and its
storage. :class:`~spoc_sockets.brokers.memory.MemoryBroker` (the default) keeps everything
in this process; a broker on Redis shares rooms across processes and machines without any
change to the channel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

__all__ = ["Broker", "Deliver", "Event"]

Event = dict[str, Any]
#: ``deliver(topic, event)``: called for every event published on a subscribed topic,
#: in every process, from whatever thread the broker delivers on.
Deliver = Callable[[str, Event], None]


class Broker(ABC):
    """Room history, membership and publish/subscribe for chat channels.

    Topics are strings: ``"room:<name>"`` for a room's events and ``"user:<id>"`` for
    direct notifications. Every method may be called from any thread.
    """

    @abstractmethod
    def attach(self, deliver: Deliver) -> None:
        """Register the callback that receives events of subscribed topics."""

    @abstractmethod
    def subscribe(self, topic: str) -> None:
        """Start delivering ``topic``'s events to this process (idempotent)."""

    @abstractmethod
    def unsubscribe(self, topic: str) -> None:
        """Stop delivering ``topic``'s events to this process."""

    @abstractmethod
    def publish(self, topic: str, event: Event) -> None:
        """Deliver ``event`` to every process subscribed to ``topic``."""

    @abstractmethod
    def append(self, room: str, message: Event, retention: int) -> Event:
        """Store a room message: give it the room's next ``id``, keep the last
        ``retention`` messages, and return it as stored."""

    @abstractmethod
    def recent(self, room: str, count: int) -> list[Event]:
        """The last ``count`` messages of ``room``, oldest first."""

    @abstractmethod
    def since(self, room: str, last_id: int) -> tuple[list[Event], bool]:
        """Messages after ``last_id``, oldest first, and whether none is missing
        (False when ``last_id`` is older than what is retained)."""

    @abstractmethod
    def join(self, room: str, user: str) -> bool:
        """Count one more connection of ``user`` in ``room``; True if it is the first."""

    @abstractmethod
    def leave(self, room: str, user: str) -> bool:
        """Count one connection less; True if it was the user's last in the room."""

    @abstractmethod
    def members(self, room: str) -> list[str]:
        """The users present in ``room``, sorted."""
