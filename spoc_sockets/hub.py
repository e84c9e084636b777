"""Hub: the core's side of one adapter server.

An adapter holds one hub. The hub opens a :class:`ServerConnection` per transport and
keeps what every adapter would otherwise repeat:

* which connections have output to flush (:meth:`take_pending`), and one wake-up call
  to the adapter when the first appears, from whatever task or thread produced it;
* the earliest deadline of all its connections (:meth:`next_deadline`,
  :meth:`handle_timeouts`), so an adapter needs a single timer; when a connection sets
  a deadline earlier than the one :meth:`next_deadline` last reported, the hub wakes the
  adapter, so a deadline is honoured even if nothing else happens on the server;
* graceful shutdown (:meth:`shutdown`): refuse new handshakes with 503, close 1001.

An adapter that runs coroutines (asyncio, trio) passes ``spawn``: the core hands it the
coroutine of each ``async def`` hook to run, and the connection's input waits meanwhile.
Without ``spawn`` (threads), ``async def`` hooks are refused with
:class:`~spoc_sockets.UsageError` when the hub is made.

The adapter's contract, on its own loop or thread: after :meth:`ServerConnection.receive_data`,
after :meth:`handle_timeouts`, and whenever ``wakeup`` fired, write
``conn.data_to_send(now)`` for each connection of :meth:`take_pending` and close the
transports whose ``should_close`` is true.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from .connection import ServerConnection

if TYPE_CHECKING:
    from .channel import Spawn
    from .router import Router

__all__ = ["Hub"]


class Hub:
    """One adapter server's connections, their pending output and their timers."""

    def __init__(
        self,
        router: Router,
        wakeup: Callable[[], None] | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        if spawn is None:
            router.refuse_async_hooks()
        self.router = router
        #: runs the coroutine of an ``async def`` hook (``None``: hooks must be plain)
        self.spawn = spawn
        #: True after :meth:`shutdown`: new handshakes are answered with 503
        self.refusing = False
        self._wakeup = wakeup
        self._woken = False
        self._reported: float | None = None  # what next_deadline last told the adapter
        self._pending: deque[ServerConnection] = deque()
        self._timers: list[tuple[float, int, ServerConnection]] = []
        self._order = itertools.count()
        self._connections: dict[ServerConnection, None] = {}

    @property
    def connections(self) -> list[ServerConnection]:
        """The live connections of this hub, in every state but CLOSED."""
        return list(self._connections)

    def open(
        self, now: float, *, peer: tuple[str, int] | None = None, transport: Hashable | None = None
    ) -> ServerConnection:
        """A new connection for a transport just accepted (``transport`` must be new)."""
        conn = ServerConnection(self.router, now, peer=peer, transport=transport, hub=self)
        self._connections[conn] = None
        return conn

    def take_pending(self) -> list[ServerConnection]:
        """The connections with something to flush (or to close) since the last call."""
        self._woken = False
        pending = self._pending
        taken = []
        while pending:
            taken.append(pending.popleft())
        return taken

    def next_deadline(self) -> float | None:
        """The earliest deadline of any connection, or None."""
        timers = self._timers
        while timers and timers[0][2].next_deadline() != timers[0][0]:
            heapq.heappop(timers)  # superseded by a later rearm
        self._reported = timers[0][0] if timers else None
        return self._reported

    def handle_timeouts(self, now: float) -> None:
        """Run every deadline that has passed; those connections become pending."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, conn = heapq.heappop(timers)
            if conn.next_deadline() == deadline:
                conn.handle_timeout(now)
                self.schedule(conn)

    def shutdown(self) -> None:
        """Stop accepting: 503 to new handshakes, close 1001 to every open connection.

        Connections finish within their ``close_timeout`` (through the timers); the
        adapter keeps running until :attr:`connections` is empty.
        """
        self.refusing = True
        for conn in list(self._connections):
            conn.shutdown()

    # -- called by ServerConnection --------------------------------------------------

    def schedule(self, conn: ServerConnection) -> None:
        """``conn`` has output: queue it, and wake the adapter if it is not awake yet."""
        self._pending.append(conn)
        self._wake()

    def rearm(self, conn: ServerConnection, deadline: float) -> None:
        """``conn`` needs :meth:`handle_timeouts` at ``deadline``; wake the adapter if
        that is earlier than what its timer follows."""
        heapq.heappush(self._timers, (deadline, next(self._order), conn))
        if self._reported is None or deadline < self._reported:
            self._reported = deadline
            self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            if self._wakeup is not None:
                self._wakeup()

    def forget(self, conn: ServerConnection) -> None:
        self._connections.pop(conn, None)
        if len(self._timers) > 64 + 4 * len(self._connections):  # mostly stale entries:
            self._timers = [  # keep only the live ones (finished connections are freed)
                entry for entry in self._timers if entry[2].next_deadline() == entry[0]
            ]
            heapq.heapify(self._timers)
