"""MemoryBroker: the default broker, in this process only."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import Broker, Deliver, Done, HistoryPage, RoomsFull, fit

__all__ = ["MemoryBroker"]


@dataclass
class _Room:
    members: Counter[str] = field(default_factory=Counter)
    history: deque[tuple[int, bytes, int]] = field(default_factory=deque)  # id, UTF-8, size
    size: int = 0  # bytes of history
    last_id: int = 0
    base: int = 0  # ids of this room start after it: past every id of a room freed before


class MemoryBroker(Broker):
    """Rooms, history and fan-out in memory; events are delivered, and every ``done``
    called, before the method returns.

    A room lives while it has members, then until :meth:`expire` finds it empty for long
    enough: the rooms that became empty are kept in the order they did, so an expiry
    pass only looks at the rooms it frees (and one more).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliver: list[Deliver] = []
        self._topics: Counter[str] = Counter()  # topic -> subscriptions
        self._rooms: dict[str, _Room] = {}
        self._empty: dict[str, float] = {}  # room -> when it became empty, oldest first
        self._high = 0  # the highest id of any room freed so far

    def attach(self, deliver: Deliver) -> None:
        self._deliver.append(deliver)

    def subscribe(self, topic: str) -> None:
        with self._lock:
            self._topics[topic] += 1

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._topics[topic] -= 1
            if self._topics[topic] <= 0:
                del self._topics[topic]

    def publish(self, topic: str, event: str) -> None:
        if topic in self._topics:
            for deliver in self._deliver:
                deliver(topic, event)

    def post(
        self, room: str, message: str, max_messages: int, max_bytes: int, done: Done[str]
    ) -> None:
        with self._lock:
            state = self._rooms.get(room)
            if state is None:  # only members post: a room that expired meanwhile
                state = self._rooms[room] = _Room(last_id=self._high, base=self._high)
            state.last_id += 1
            stored = f'{message[:-1]},"id":{state.last_id}}}'
            data = stored.encode()  # kept as UTF-8: a str with one emoji takes 4 bytes a char
            size = len(data)
            state.history.append((state.last_id, data, size))
            state.size += size
            while len(state.history) > max_messages or (
                state.size > max_bytes and len(state.history) > 1
            ):
                state.size -= state.history.popleft()[2]
        self.publish(f"room:{room}", stored)
        done(stored)

    def history(
        self, room: str, since: int | None, max_messages: int, max_bytes: int,
        done: Done[HistoryPage],
    ) -> None:  # fmt: skip
        with self._lock:
            state = self._rooms.get(room)
            history = list(state.history) if state is not None else []
            last_id = state.last_id if state is not None else self._high
            base = state.base if state is not None else self._high
        if since is None:
            last = history[max(0, len(history) - max_messages) :]  # for 0: none, not all
            done(HistoryPage(_fit(reversed(last), max_bytes)[::-1]))
            return
        if since > last_id:  # an id of a room freed since: all we have, and say so
            since, complete = 0, False
        else:
            oldest = history[0][0] if history else last_id + 1
            complete = since >= oldest - 1 and since >= base
        after = [entry for entry in history if entry[0] > since]
        page = _fit(after[:max_messages], max_bytes)
        done(HistoryPage(page, complete, more=len(page) < len(after)))

    def join(self, room: str, user: str, max_rooms: int, done: Done[bool]) -> None:
        with self._lock:
            state = self._rooms.get(room)
            if state is None:
                if len(self._rooms) >= max_rooms and self._empty:  # the oldest empty room goes
                    self._free(next(iter(self._empty)))
                if len(self._rooms) < max_rooms:
                    state = self._rooms[room] = _Room(last_id=self._high, base=self._high)
            first = False
            if state is not None:
                self._empty.pop(room, None)
                state.members[user] += 1
                first = state.members[user] == 1
        done(RoomsFull(room) if state is None else first)

    def leave(self, room: str, user: str, now: float, done: Done[bool]) -> None:
        done(self._leave(room, user, now))

    def _leave(self, room: str, user: str, now: float) -> bool:
        with self._lock:
            state = self._rooms.get(room)
            if state is None or state.members[user] <= 0:
                return False
            state.members[user] -= 1
            if state.members[user] > 0:
                return False
            del state.members[user]
            if not state.members:
                if state.history:
                    self._empty[room] = now
                else:
                    del self._rooms[room]
            return True

    def members(self, room: str, done: Done[list[str]]) -> None:
        with self._lock:
            state = self._rooms.get(room)
            members = sorted(state.members) if state is not None else []
        done(members)

    def expire(self, now: float, after: float) -> float | None:
        with self._lock:
            while self._empty:
                room, since = next(iter(self._empty.items()))
                if now - since < after:
                    return since + after
                self._free(room)
            return None

    def _free(self, room: str) -> None:
        del self._empty[room]
        self._high = max(self._high, self._rooms.pop(room).last_id)

    def room_count(self) -> int:
        with self._lock:
            return len(self._rooms)


def _fit(entries: Iterable[tuple[int, bytes, int]], max_bytes: int) -> list[str]:
    """The texts of ``entries`` (id, UTF-8, size), in order, while they fit in
    ``max_bytes`` (the first always does)."""
    return [data.decode() for data in fit(((data, size) for _, data, size in entries), max_bytes)]
