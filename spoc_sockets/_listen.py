"""Listening sockets for the adapters (not part of the sans-IO core)."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._hub import Hub
from .errors import UsageError
from .limits import check_flag, check_number, shown

if TYPE_CHECKING:
    from .channel import Spawn
    from .router import Router

__all__ = [
    "BACKLOG",
    "OUT_OF_RESOURCES",
    "accept_waiting",
    "bind",
    "check_listening",
    "open_hub",
    "peer_address",
    "watch_listeners",
]

logger = logging.getLogger("spoc_sockets.server")

#: The ``accept`` errors that mean the process ran out of descriptors or memory: the
#: adapter reports them to :meth:`Hub.pause_accepting <spoc_sockets.Hub.pause_accepting>`.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: The listen queue length of every adapter by default: the kernel's traditional
#: ``SOMAXCONN`` (it caps a larger value where its own limit is lower).
BACKLOG = 128
#: Connections accepted per readiness of a non-blocking listener, at most.
ACCEPT_BATCH = 64


def check_listening(backlog: object, reuse_port: object, tls: object) -> None:
    """Refuse a wrong listening keyword of an adapter with a UsageError naming it."""
    check_number("backlog", backlog, integer=True, optional=False, minimum=1)
    check_flag("reuse_port", reuse_port)
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        raise UsageError(f"ssl is an ssl.SSLContext or None, not {shown(tls)}")


def open_hub(
    router: Router,
    wakeup: Callable[[], None],
    spawn: Spawn | None,
    shutdown_timeout: float | None,
    drain_timeout: float,
) -> Hub:
    """An adapter server's hub, the core's side of it (``spawn``: how the adapter runs
    ``async def`` hooks; ``None`` refuses them), with the two deadlines every adapter takes."""
    return Hub(
        router, wakeup, spawn, drain_timeout=drain_timeout, shutdown_timeout=shutdown_timeout
    )


def peer_address(address: object) -> tuple[str, int] | None:
    """An IP socket's peer address as ``(host, port)``; ``None`` for any other kind."""
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def accept_waiting(
    listener: socket.socket, hub: Hub, now: float
) -> list[tuple[socket.socket, tuple[str, int] | None]]:
    """The connections waiting on a non-blocking ``listener`` (at most
    :data:`ACCEPT_BATCH`); out of descriptors, the hub hears it and stops accepting."""
    accepted: list[tuple[socket.socket, tuple[str, int] | None]] = []
    while len(accepted) < ACCEPT_BATCH:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            break
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                hub.pause_accepting(now, exc)
            else:
                logger.warning("accept failed: %s", exc)
            break
        accepted.append((sock, peer_address(address)))
    return accepted


def bind(host: str | None, port: int, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it names; ``None``: every
    interface) on ``port`` (0: one free port, the same for every address)."""
    if host is None and socket.has_dualstack_ipv6():
        addresses = [(socket.AF_INET6, "::")]
    else:
        infos = socket.getaddrinfo(
            host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((info[0], str(info[4][0])) for info in infos))
    listeners: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.create_server(
                (address, port),
                family=family,
                backlog=backlog,
                reuse_port=reuse_port,
                dualstack_ipv6=host is None and family == socket.AF_INET6,
            )
            listeners.append(sock)
            sock.setblocking(False)
            port = port or sock.getsockname()[1]
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def watch_listeners(
    hub: Hub,
    listeners: list[socket.socket],
    watching: bool,
    watch: Callable[[socket.socket, bool], object],
) -> bool:
    """Have the adapter ``watch`` its listeners (``True``) while ``hub`` says to accept,
    and unwatch them (``False``) otherwise; once the hub refuses for good, they are
    closed and forgotten. ``watching``: whether they are watched now; returns the same,
    after."""
    if hub.accepting != watching:
        watching = hub.accepting
        for listener in listeners:  # unwatched, else the loop wakes for them in vain
            watch(listener, watching)
    if hub.refusing:
        for listener in listeners:
            listener.close()
        listeners.clear()
    return watching
