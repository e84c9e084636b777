"""The behaviour suite over the trio adapter (its run lives in a background thread)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any, Generic, TypeVar

import trio

from spoc_sockets import Router
from spoc_sockets.trio import Server, serve

from .harness import DEFAULTS, Options
from .harness_net import HOST, TIMEOUT, NetServer, net_harness

T = TypeVar("T")


class TrioThread(Generic[T]):
    """``trio.run`` in a background thread, around ``await nursery.start(target)``.

    ``value`` is what ``target`` passed to ``task_status.started``. ``cancel()`` cancels
    the scope around the nursery (for ``serve``: a graceful shutdown); ``cancelled``
    tells, once joined, whether the run ended by that cancellation.
    """

    def __init__(self, target: Callable[..., Awaitable[object]]) -> None:
        self.target = target
        self.cancelled: bool | None = None
        self.error: BaseException | None = None
        self._ready: Future[tuple[T, trio.lowlevel.TrioToken, trio.CancelScope]] = Future()
        self._thread = threading.Thread(target=self._run, name="trio-server", daemon=True)

    def __enter__(self) -> TrioThread[T]:
        self._thread.start()
        self.value, self.token, self._scope = self._ready.result(timeout=TIMEOUT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()
        self.join()

    async def _main(self) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                value = await nursery.start(self.target)
                self._ready.set_result((value, trio.lowlevel.current_trio_token(), scope))
        self.cancelled = scope.cancelled_caught

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
            if not self._ready.done():
                self._ready.set_exception(exc)

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run the sync ``fn(*args)`` in the trio thread (nothing once the run ended)."""
        with suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def run(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Await ``fn(*args)`` in the trio thread (nothing once the run ended); past
        ``TIMEOUT`` it fails with :exc:`trio.TooSlowError` instead of hanging."""

        async def bounded() -> None:
            with trio.fail_after(TIMEOUT):
                await fn(*args)

        with suppress(trio.RunFinishedError):
            trio.from_thread.run(bounded, trio_token=self.token)

    def cancel(self) -> None:
        self.call(self._scope.cancel)

    def join(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the trio run did not stop"
        assert self.error is None, self.error


def serving(router: Router, **options: Any) -> TrioThread[Server]:
    """``serve(router, HOST, 0, **options)`` in a background trio run."""
    return TrioThread(partial(serve, router, HOST, 0, **options))


@contextmanager
def start(router: Router, options: Options = DEFAULTS) -> Iterator[NetServer]:
    with serving(router, **options.keywords()) as running:
        server = running.value
        yield NetServer(server.port, lambda: running.run(server.aclose))


OPTIONS = frozenset({"tls", "shutdown_timeout", "drain_timeout"})
HARNESS = net_harness(start, OPTIONS, "trio")
