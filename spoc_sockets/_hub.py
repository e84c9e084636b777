"""Hub: the core's side of one adapter server, and the whole life of its transports.

An adapter holds one hub. The hub opens a :class:`ServerConnection` per transport and
owns every decision about time that an adapter would otherwise repeat:

* which connections have output to flush (:meth:`take_pending`), and one wake-up call
  to the adapter when the first appears, from whatever task or thread produced it;
* one timer for everything (:meth:`next_deadline`, :meth:`handle_timeouts`): each
  connection's deadlines, the **drain** deadline of a finished connection whose
  transport is not gone yet (``drain_timeout``), the **shutdown** deadline
  (``shutdown_timeout``), the bound on async hooks still running once every
  connection is gone (``drain_timeout`` again), and the **accept back-off** after the
  process ran out of file descriptors. When a deadline is set earlier than the one
  :meth:`next_deadline` last reported, the hub wakes the adapter;
* one connection per transport at a time (:meth:`open` refuses a second while the
  core has not finished the first);
* graceful shutdown (:meth:`shutdown`): 503 to new handshakes, close 1001, and past
  ``shutdown_timeout`` the verdict "abort the transport" for whatever remains;
  :attr:`finished` says when nothing is left.

The adapter's contract, on its own loop or thread: after :meth:`ServerConnection.receive_data`,
after :meth:`handle_timeouts`, and whenever ``wakeup`` fired, for each connection of
:meth:`take_pending` take ``data = conn.data_to_send(now)``; if ``conn.should_abort``,
drop the transport; else write ``data``, and close the transport (after its last bytes)
once ``conn.should_close``. When the transport is gone, for whatever reason, call
``conn.transport_lost(now)``. Keep one timer at :meth:`next_deadline`; accept only while
:attr:`accepting` (report running out of descriptors with :meth:`pause_accepting`).

An adapter that runs coroutines (asyncio, trio) passes ``spawn``: the core hands it the
coroutine of each ``async def`` hook to run, and the connection's input waits meanwhile.
Without ``spawn`` (threads), ``async def`` hooks are refused with
:class:`~spoc_sockets.UsageError` when the hub is made.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from typing import TYPE_CHECKING

from ._connection import ServerConnection
from .errors import UsageError
from .limits import check_number

if TYPE_CHECKING:
    from .channel import Spawn
    from .router import Router

__all__ = ["ACCEPT_RETRY", "Hub"]

logger = logging.getLogger("spoc_sockets.server")

#: Seconds before accepting again after the process ran out of file descriptors, when
#: no connection of this hub's own can free one (otherwise: as soon as one is gone).
ACCEPT_RETRY = 1.0


class Hub:
    """One adapter server's connections, their pending output, timers and verdicts.

    :param drain_timeout: seconds a finished connection's transport may take to write
        its last bytes (and, with TLS, its ``close_notify``) before the verdict
        :attr:`~ServerConnection.should_abort`; also what async hooks still running
        get once a shutdown has no connection left.
    :param shutdown_timeout: seconds a graceful :meth:`shutdown` may take before every
        remaining transport gets the abort verdict (``None``: no bound but the
        channels' ``close_timeout`` and ``drain_timeout``).
    """

    def __init__(
        self,
        router: Router,
        wakeup: Callable[[], None] | None = None,
        spawn: Spawn | None = None,
        *,
        drain_timeout: float = 5.0,
        shutdown_timeout: float | None = 30.0,
    ) -> None:
        check_number("drain_timeout", drain_timeout, integer=False, optional=False)
        check_number("shutdown_timeout", shutdown_timeout, integer=False, optional=True)
        if spawn is None:
            router.refuse_async_hooks()
        self.router = router
        self.drain_timeout = drain_timeout
        self.shutdown_timeout = shutdown_timeout
        #: runs the coroutine of an ``async def`` hook (``None``: hooks must be plain)
        self.spawn: Spawn | None = None if spawn is None else self._run_hook
        #: True after :meth:`shutdown`: new handshakes are answered with 503
        self.refusing = False
        self._spawn = spawn
        self._hooks: dict[object, Callable[[], object]] = {}  # running hooks: their cancel
        self._wakeup = wakeup
        self._woken = False
        self._reported: float | None = None  # what next_deadline last told the adapter
        self._pending: deque[ServerConnection] = deque()
        self._timers: list[tuple[float, int, ServerConnection]] = []
        self._order = itertools.count()
        self._connections: dict[ServerConnection, None] = {}  # not finished
        self._draining: dict[ServerConnection, None] = {}  # finished, transport not gone
        self._claims: dict[Hashable, ServerConnection] = {}  # transport: its one connection
        self._stop_at: float | None = None  # the shutdown deadline (then the hooks')
        self._retry_at: float | None = None  # when to accept again, with nothing to wait for
        self._out_of_descriptors = False

    # -- what the adapter reads -----------------------------------------------------------

    @property
    def connections(self) -> list[ServerConnection]:
        """The connections the core has not finished (every state but CLOSED)."""
        return list(self._connections)

    @property
    def draining(self) -> list[ServerConnection]:
        """The connections the core has finished whose transports are not reported gone."""
        return list(self._draining)

    @property
    def finished(self) -> bool:
        """True once :meth:`shutdown` has nothing left: every transport reported gone
        and no async hook running. The adapter's close returns then."""
        return self.refusing and not self._connections and not self._draining and not self._hooks

    @property
    def accepting(self) -> bool:
        """Whether the adapter should accept new transports now (not after
        :meth:`shutdown`, nor after :meth:`pause_accepting` until a descriptor is free)."""
        return not self.refusing and not self._out_of_descriptors

    # -- what the adapter calls -----------------------------------------------------------

    def open(
        self, now: float, *, peer: tuple[str, int] | None = None, transport: Hashable | None = None
    ) -> ServerConnection:
        """A new connection for a transport just accepted. ``transport`` (the adapter's
        handle, kept as ``conn.transport``) carries one connection at a time: opening a
        second one on it before the core finished the first is a :class:`UsageError`."""
        if transport is not None and transport in self._claims:
            raise UsageError(
                f"transport {transport!r} already has a connection: not upgrading twice"
            )
        conn = ServerConnection(self.router, now, peer=peer, transport=transport, hub=self)
        self._connections[conn] = None
        if transport is not None:
            self._claims[transport] = conn
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
        """The earliest deadline of the hub and its connections, or None."""
        timers = self._timers
        while timers and timers[0][2].next_deadline() != timers[0][0]:
            heapq.heappop(timers)  # superseded by a later rearm
        deadline = timers[0][0] if timers else None
        for own in (self._stop_at, self._retry_at):
            if own is not None and (deadline is None or own < deadline):
                deadline = own
        self._reported = deadline
        return deadline

    def handle_timeouts(self, now: float) -> None:
        """Run every deadline that has passed; those connections become pending."""
        if self._retry_at is not None and now >= self._retry_at:
            self._accept_again()
        if self._stop_at is not None and now >= self._stop_at:
            self._stop_at = None
            self._give_up()
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, conn = heapq.heappop(timers)
            if conn.next_deadline() == deadline:
                conn.handle_timeout(now)
                self.schedule(conn)

    def shutdown(self, now: float) -> None:
        """Stop accepting at ``now``: 503 to new handshakes, close 1001 to every open
        connection.

        Connections finish within their ``close_timeout`` and transports within
        ``drain_timeout`` (through the timers); the remaining ones get the abort verdict
        at ``now + shutdown_timeout``. :attr:`finished` turns true once nothing is left.
        """
        if self.refusing:
            return
        self.refusing = True
        self._retry_at = None
        if self.shutdown_timeout is not None:
            self._arm_stop(now + self.shutdown_timeout)
        for conn in list(self._connections):
            conn.shutdown()
        self._when_empty(now)

    def pause_accepting(self, now: float, error: OSError) -> None:
        """Accepting failed for want of file descriptors (``error``): :attr:`accepting`
        is False until a transport of this hub is gone, or for :data:`ACCEPT_RETRY`
        seconds when there is none. One warning per pause."""
        if self._out_of_descriptors or self.refusing:
            return
        logger.warning("accept failed (%s): not accepting until a connection closes", error)
        self._out_of_descriptors = True
        if not self._connections and not self._draining:
            self._retry_at = now + ACCEPT_RETRY
            self._arm(self._retry_at)

    # -- called by ServerConnection ---------------------------------------------------------

    def schedule(self, conn: ServerConnection) -> None:
        """``conn`` has output: queue it, and wake the adapter if it is not awake yet."""
        self._pending.append(conn)
        self._wake()

    def rearm(self, conn: ServerConnection, deadline: float) -> None:
        """``conn`` needs :meth:`handle_timeouts` at ``deadline``."""
        heapq.heappush(self._timers, (deadline, next(self._order), conn))
        self._arm(deadline)

    def finish(self, conn: ServerConnection) -> None:
        """The core finished ``conn``: it drains until its transport is reported gone."""
        if conn in self._connections:  # else its transport is gone already
            del self._connections[conn]
            self._draining[conn] = None
        self._release(conn)

    def forget(self, conn: ServerConnection, now: float) -> None:
        """``conn``'s transport is gone: a descriptor is free, and nothing waits for it."""
        self._connections.pop(conn, None)
        self._draining.pop(conn, None)
        self._release(conn)
        self._accept_again()
        self._when_empty(now)
        live = len(self._connections) + len(self._draining)
        if len(self._timers) > 64 + 4 * live:  # mostly stale entries:
            self._timers = [  # keep only the live ones (finished connections are freed)
                entry for entry in self._timers if entry[2].next_deadline() == entry[0]
            ]
            heapq.heapify(self._timers)

    # -- inside ---------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            if self._wakeup is not None:
                self._wakeup()

    def _release(self, conn: ServerConnection) -> None:
        """``conn``'s transport may carry a new connection."""
        if conn.transport is not None and self._claims.get(conn.transport) is conn:
            del self._claims[conn.transport]

    def _arm(self, deadline: float) -> None:
        """Wake the adapter if ``deadline`` is earlier than what its timer follows."""
        if self._reported is None or deadline < self._reported:
            self._reported = deadline
            self._wake()

    def _arm_stop(self, deadline: float) -> None:
        if self._stop_at is None or deadline < self._stop_at:
            self._stop_at = deadline
            self._arm(deadline)

    def _when_empty(self, now: float) -> None:
        """Stopping with no transport left: async hooks still running get ``drain_timeout``;
        with none, the shutdown is over (the adapter is woken to see it)."""
        if self.refusing and not self._connections and not self._draining:
            if self._hooks:
                self._arm_stop(now + self.drain_timeout)
            else:
                self._stop_at = None
                self._wake()

    def _give_up(self) -> None:
        """The shutdown deadline passed: abort every transport, cancel every hook."""
        remaining = [*self._connections, *self._draining]
        if remaining:
            logger.warning("shutdown_timeout passed: dropping %d remaining clients", len(remaining))
        for conn in remaining:
            conn.abort()
        hooks, self._hooks = self._hooks, {}
        for cancel in hooks.values():
            cancel()
        self._wake()

    def _accept_again(self) -> None:
        self._retry_at = None
        if self._out_of_descriptors and not self.refusing:
            self._out_of_descriptors = False
            self._wake()

    def _run_hook(self, coroutine: Coroutine[object, None, None]) -> Callable[[], object]:
        """Spawn an async hook through the adapter, and know while it runs."""
        assert self._spawn is not None
        token = object()

        async def tracked() -> None:
            try:
                await coroutine
            finally:
                self._hook_ended(token)

        cancel = self._spawn(tracked())
        self._hooks[token] = cancel

        def cancel_hook() -> object:
            self._hooks.pop(token, None)
            return cancel()

        return cancel_hook

    def _hook_ended(self, token: object) -> None:
        if self._hooks.pop(token, None) is not None and self.finished:
            self._stop_at = None
            self._wake()
