"""Counters of what each channel did, for ``router.stats()`` and metrics exporters.

Traffic is counted on each :class:`~spoc_sockets.Connection` while it lives (plain
integer increments on the owner's thread) and added to its route's totals when it ends,
so the hot path pays a few additions per message and nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .channel import Connection

__all__ = ["ChannelStats", "RouteCounters", "RouterStats"]


@dataclass(frozen=True)
class ChannelStats:
    """A snapshot of one route's counters (a path as registered, ``/stream/{id}``)."""

    #: open connections now
    connections: int
    #: handshakes accepted since the router was made
    accepted: int
    #: handshakes refused, by HTTP status
    refused: Mapping[int, int]
    #: connections finished, by close code (1006: the transport was lost)
    closed: Mapping[int, int]
    #: messages and payload bytes received from clients
    messages_in: int
    bytes_in: int
    #: messages and payload bytes queued for clients
    messages_out: int
    bytes_out: int
    #: messages dropped by the ``"drop"`` overflow policy
    dropped: int


@dataclass(frozen=True)
class RouterStats:
    """``router.stats()``: every route's :class:`ChannelStats`, and the refusals of
    requests that reached no channel (malformed, unknown path, shutting down)."""

    channels: Mapping[str, ChannelStats]
    unrouted_refused: Mapping[int, int]

    def __getitem__(self, path: str) -> ChannelStats:
        return self.channels[path]


@dataclass
class RouteCounters:
    """One route's totals of finished connections (owned by the router)."""

    accepted: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    closed: Counter[int] = field(default_factory=Counter)
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    dropped: int = 0

    def add(self, conn: Connection[object], code: int) -> None:
        """``conn`` finished with ``code``: keep its traffic."""
        self.closed[code] += 1
        self.messages_in += conn.messages_in
        self.bytes_in += conn.bytes_in
        self.messages_out += conn.messages_out
        self.bytes_out += conn.bytes_out
        self.dropped += conn.dropped

    def snapshot(self, live: Iterable[Connection[object]]) -> ChannelStats:
        """These totals plus the traffic of the ``live`` connections of the route."""
        live = list(live)
        return ChannelStats(
            connections=len(live),
            accepted=self.accepted,
            refused=dict(self.refused),
            closed=dict(self.closed),
            messages_in=self.messages_in + sum(c.messages_in for c in live),
            bytes_in=self.bytes_in + sum(c.bytes_in for c in live),
            messages_out=self.messages_out + sum(c.messages_out for c in live),
            bytes_out=self.bytes_out + sum(c.bytes_out for c in live),
            dropped=self.dropped + sum(c.dropped for c in live),
        )
