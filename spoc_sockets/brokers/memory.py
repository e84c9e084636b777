"""MemoryBroker: the default broker, in this process only."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque

from . import Broker, Deliver, Event

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Rooms, history and fan-out in memory; events are delivered synchronously.

    Membership is kept only for rooms with members; the history of a room (its last
    ``retention`` messages, for resume) is kept for the life of the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliver: list[Deliver] = []
        self._topics: set[str] = set()
        self._history: dict[str, deque[Event]] = {}
        self._last_id: dict[str, int] = defaultdict(int)
        self._members: dict[str, Counter[str]] = defaultdict(Counter)

    def attach(self, deliver: Deliver) -> None:
        self._deliver.append(deliver)

    def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    def publish(self, topic: str, event: Event) -> None:
        if topic in self._topics:
            for deliver in self._deliver:
                deliver(topic, event)

    def append(self, room: str, message: Event, retention: int) -> Event:
        with self._lock:
            self._last_id[room] += 1
            stored = {**message, "id": self._last_id[room]}
            history = self._history.get(room)
            if history is None or history.maxlen != retention:
                history = self._history[room] = deque(history or (), maxlen=retention)
            history.append(stored)
            return stored

    def recent(self, room: str, count: int) -> list[Event]:
        with self._lock:
            history = self._history.get(room, ())
            return list(history)[-count:] if count > 0 else []

    def since(self, room: str, last_id: int) -> tuple[list[Event], bool]:
        with self._lock:
            history = list(self._history.get(room, ()))
            last = self._last_id.get(room, 0)
        missed = [m for m in history if m["id"] > last_id]
        oldest = history[0]["id"] if history else last + 1
        return missed, last_id >= oldest - 1

    def join(self, room: str, user: str) -> bool:
        with self._lock:
            self._members[room][user] += 1
            return self._members[room][user] == 1

    def leave(self, room: str, user: str) -> bool:
        with self._lock:
            members = self._members.get(room)
            if members is None or members[user] <= 0:
                return False
            members[user] -= 1
            if members[user] > 0:
                return False
            del members[user]
            if not members:
                del self._members[room]
            return True

    def members(self, room: str) -> list[str]:
        with self._lock:
            return sorted(self._members.get(room, ()))
