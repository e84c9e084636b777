"""The router: path templates to channels, plain HTTP routes, the upgraded-connection set.

It also keeps what its options bound across every server that serves it: each route's
counters (:meth:`Router.stats`) and the per-address admission (open connections and
handshake rate per client IP). Per-transport state is each server's
(:class:`~spoc_sockets.Hub`); the decisions that use all this are a connection's
:class:`~spoc_sockets._session.Session`'s.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import unquote

from ._handshake import check_upgrade
from .channel import ChannelServer, Connection, check_hooks
from .errors import ProtocolError, Reject, UsageError
from .limits import WINDOW, Number, RateWindow, check_flag, check_numbers
from .request import Request
from .stats import RouteCounters, RouterStats

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .channel import ChannelOptions

#: Errors of application code: hooks and HTTP routes (with their traceback).
logger = logging.getLogger("spoc_sockets.hooks")

__all__ = ["Response", "Route", "Router"]

#: Any channel, whatever its principal type.
AnyChannel = ChannelServer[Any]
C = TypeVar("C", bound=AnyChannel)


@dataclass(frozen=True)
class Response:
    """The answer of a plain HTTP route (see :meth:`Router.add_http`)."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


HTTPHandler = Callable[[Request], Response]


class Route(NamedTuple):
    """Where a request path leads: the path as registered, its channel, its params."""

    path: str
    channel: AnyChannel
    params: dict[str, str]


@dataclass(frozen=True)
class _Template:
    path: str
    segments: tuple[str | None, ...]  # a literal, or None for a {name} segment
    names: tuple[str, ...]
    server: AnyChannel

    def overlaps(self, other: _Template) -> bool:
        """Whether some path would match both templates."""
        return len(self.segments) == len(other.segments) and all(
            a is None or b is None or a == b
            for a, b in zip(self.segments, other.segments, strict=True)
        )

    def match(self, decoded: list[str]) -> dict[str, str] | None:
        values = []
        for literal, value in zip(self.segments, decoded, strict=True):
            if literal is None:
                if not value:
                    return None
                values.append(value)
            elif literal != value:
                return None
        return dict(zip(self.names, values, strict=True))


def _compile(path: str, server: AnyChannel) -> _Template:
    if not path.startswith("/"):
        raise UsageError(f"a path starts with '/': {path!r}")
    segments: list[str | None] = []
    names: list[str] = []
    for segment in path.split("/")[1:]:
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            if not name.isidentifier() or name in names:
                raise UsageError(f"bad or repeated parameter {segment!r} in {path!r}")
            names.append(name)
            segments.append(None)
        elif "{" in segment or "}" in segment:
            raise UsageError(f"a parameter is a whole segment, like /{{name}}: {path!r}")
        else:
            segments.append(segment)
    return _Template(path, tuple(segments), tuple(names), server)


class Router:
    """Routes each upgrade request by path to a :class:`ChannelServer`.

    Static paths are looked up in a dict; templates (``/stream/{stream_id}``) are tried
    among those with the same number of segments. A static path wins over a template
    that also matches it; two templates that could match the same path are refused at
    registration.

    Its options bound what one client can make the server hold before it is upgraded:
    ``max_request_size`` (the request head), ``max_headers``, ``handshake_timeout``,
    ``max_connections_per_address`` and ``max_handshake_rate`` (per client IP address);
    their units, defaults and answers are in :doc:`the options reference </options>`.
    ``fast_path`` (on) lets the connections it routes decode simple frames themselves
    instead of through wsproto (same answers, faster; off is the reference behaviour).

    The two per-address limits are off by default: behind a reverse proxy or a NAT, one
    address is many users. Set them when clients connect directly.
    """

    #: The options and what each takes (checked at construction).
    NUMBERS: ClassVar[dict[str, Number]] = {
        "max_request_size": Number(integer=True),
        "max_headers": Number(integer=True),
        "handshake_timeout": Number(integer=False),
        "max_connections_per_address": Number(integer=True, optional=True),
        "max_handshake_rate": Number(integer=False, optional=True),
    }

    def __init__(
        self,
        *,
        max_request_size: int = 16 * 1024,
        max_headers: int = 100,
        handshake_timeout: float = 10.0,
        max_connections_per_address: int | None = None,
        max_handshake_rate: float | None = None,
        fast_path: bool = True,
    ) -> None:
        self.max_request_size = max_request_size
        self.max_headers = max_headers
        self.handshake_timeout = handshake_timeout
        self.max_connections_per_address = max_connections_per_address
        self.max_handshake_rate = max_handshake_rate
        check_numbers(self, self.NUMBERS)
        check_flag("fast_path", fast_path)
        self.fast_path = fast_path
        self._per_address: dict[str, int] = {}  # open connections per client address
        self._handshakes: dict[str, RateWindow] = {}  # per client address
        self._kept = 0  # entries kept by the last pruning of _handshakes
        self._awaits = True  # False once served by a server that cannot await hooks
        self._static: dict[str, AnyChannel] = {}
        self._templates: dict[int, list[_Template]] = {}
        self._http: dict[str, HTTPHandler] = {}
        self._upgraded: dict[Connection, None] = {}
        self._counters: dict[str, RouteCounters] = {}  # per registered path
        self._unrouted: Counter[int] = Counter()  # refusals before a channel was found

    # -- registration ---------------------------------------------------------------

    def add(self, path: str, server: C) -> C:
        """Serve ``server`` at ``path`` (``{name}`` segments become path params)."""
        if not isinstance(server, ChannelServer):
            raise UsageError(f"router.add takes a ChannelServer instance, not {server!r}")
        check_hooks(server, awaited=self._awaits)
        template = _compile(path, server)
        if not template.names:
            if path in self._static:
                raise UsageError(f"a channel is already registered at {path!r}")
            self._static[path] = server
            self._counters[path] = RouteCounters()
            return server
        same_length = self._templates.setdefault(len(template.segments), [])
        for other in same_length:
            if template.overlaps(other):
                raise UsageError(f"{path!r} conflicts with the channel at {other.path!r}")
        same_length.append(template)
        self._counters[path] = RouteCounters()
        return server

    def channel(self, path: str, **options: Unpack[ChannelOptions]) -> Callable[[type[C]], type[C]]:
        """Class decorator: register ``cls(**options)`` at ``path``; returns the class."""

        def register(cls: type[C]) -> type[C]:
            self.add(path, cls(**options))
            return cls

        return register

    def add_http(self, path: str, handler: HTTPHandler) -> None:
        """Answer plain (non-upgrade) HTTP requests for ``path`` with ``handler``."""
        if path in self._http:
            raise UsageError(f"an HTTP route is already registered at {path!r}")
        self._http[path] = handler

    def get(self, cls: type[C], path: str | None = None) -> C:
        """The instance of ``cls`` registered here (by :meth:`channel`, say), typed as
        ``cls``; ``path`` picks one when several are. :class:`UsageError` when there is
        none, or several and no ``path``."""
        found = [
            server
            for where, server in self.channels.items()
            if type(server) is cls and (path is None or where == path)
        ]
        unique = list({id(server): server for server in found}.values())
        if len(unique) != 1:
            where = f" at {path!r}" if path is not None else ""
            many = "several are: give the path" if unique else "none is registered"
            raise UsageError(f"one {cls.__name__}{where} is asked for, and {many}")
        server = unique[0]
        assert isinstance(server, cls)
        return server

    @property
    def channels(self) -> dict[str, AnyChannel]:
        """Every registered path (static and template) and its channel."""
        paths = dict(self._static)
        for templates in self._templates.values():
            paths.update((t.path, t.server) for t in templates)
        return paths

    # -- lookup ---------------------------------------------------------------------

    def resolve(self, raw_path: str) -> Route | None:
        """The route of a raw (percent-encoded) path: its channel and params, or None.

        Segments are percent-decoded one by one, so ``%2F`` never splits a segment.
        """
        if not raw_path.startswith("/"):
            return None
        segments = raw_path.split("/")[1:]
        path: str | None
        if "%" not in raw_path:  # nothing encoded: the path is its own decoding
            decoded, path = segments, raw_path
        else:
            decoded = [unquote(segment) for segment in segments]
            # %2F stays inside a segment: such a path is no static one
            path = None if any("/" in segment for segment in decoded) else "/" + "/".join(decoded)
        if path is not None:
            server = self._static.get(path)
            if server is not None:
                return Route(path, server, {})
        for template in self._templates.get(len(segments), ()):
            params = template.match(decoded)
            if params is not None:
                return Route(template.path, template.server, params)
        return None

    def refuse_async_hooks(self) -> None:
        """Called by a server that runs hooks as plain functions (the threads adapter):
        raise :class:`UsageError` now for any ``async def`` hook, and at registration
        for channels added later."""
        for server in self.channels.values():
            check_hooks(server, awaited=False)
        self._awaits = False

    def http_handler(self, path: str) -> HTTPHandler | None:
        return self._http.get(path)

    def answer_http(self, request: Request) -> Response | None:
        """The answer to a plain (non-upgrade) HTTP request, or None for "not mine".

        An HTTP route answers with its handler (500 if the handler raises); a channel's
        path answers 405 (not GET) or 426 (no upgrade); anything else is None, which the
        core answers with 404 and the ASGI adapter hands to its fallback.
        """
        handler = self._http.get(request.path)
        if handler is not None:
            try:
                return handler(request)
            except Exception:
                logger.exception("HTTP route %s failed", request.path)
                return Response(500, "internal server error\n")
        if self.resolve(request.target.partition("?")[0]) is None:
            return None
        try:
            check_upgrade(request)
        except ProtocolError as refusal:
            return Response(refusal.status or 400, f"{refusal}\n", headers=refusal.headers)
        return None  # a valid upgrade: not a plain request

    # -- the upgraded set -----------------------------------------------------------

    @property
    def upgraded(self) -> frozenset[Connection]:
        """The live upgraded connections (a snapshot): empty again once all are closed."""
        return frozenset(self._upgraded)

    def stats(self) -> RouterStats:
        """A snapshot of every route's counters (see :class:`~spoc_sockets.stats.ChannelStats`).

        Exact while one server (or several on the same thread) runs this router; with
        servers on several threads, the counts may miss an increment now and then.
        """
        live: dict[str, list[Connection]] = {path: [] for path in self._counters}
        for conn in tuple(self._upgraded):
            live.setdefault(conn.route, []).append(conn)
        return RouterStats(
            {path: counters.snapshot(live[path]) for path, counters in self._counters.items()},
            dict(self._unrouted),
        )

    def refused(self, route: str | None, status: int) -> None:
        """Count a refused handshake (``route`` None: it reached no channel)."""
        counters = self._counters.get(route) if route is not None else None
        (counters.refused if counters is not None else self._unrouted)[status] += 1

    def enter(self, conn: Connection) -> None:
        self._upgraded[conn] = None
        counters = self._counters.get(conn.route)
        if counters is not None:
            counters.accepted += 1

    def leave(self, conn: Connection, code: int) -> None:
        if conn not in self._upgraded:
            return
        del self._upgraded[conn]
        counters = self._counters.get(conn.route)
        if counters is not None:
            counters.add(conn, code)

    # -- admission ------------------------------------------------------------------

    def admit(self, channel: AnyChannel, request: Request, now: float) -> None:
        """Take one place for a handshake, or raise :class:`Reject` (429, 503).

        The place (on the channel and for the client's address) counts from now, while
        authentication runs too, until :meth:`discharge` gives it back when the
        connection ends, accepted or not.
        """
        most = channel.max_connections
        if most is not None and channel._admitted >= most:
            raise Reject(503, "this channel is full", [("Retry-After", "10")])
        address = _address(request)
        if address is not None:
            limit = self.max_connections_per_address
            if limit is not None and self._per_address.get(address, 0) >= limit:
                raise Reject(429, "too many connections from this address")
            if self.max_handshake_rate is not None:
                self._count_handshake(address, now, self.max_handshake_rate)
            self._per_address[address] = self._per_address.get(address, 0) + 1
        channel._admitted += 1

    def discharge(self, channel: AnyChannel, request: Request) -> None:
        """Give back the place :meth:`admit` took."""
        channel._admitted -= 1
        address = _address(request)
        if address is not None:
            left = self._per_address.pop(address) - 1
            if left:
                self._per_address[address] = left

    def _count_handshake(self, address: str, now: float, rate: float) -> None:
        window = self._handshakes.get(address)
        if window is None:
            window = self._handshakes[address] = RateWindow(now)
            if len(self._handshakes) > max(1024, 2 * self._kept):  # forget ended windows
                self._handshakes = {
                    a: w for a, w in self._handshakes.items() if now - w.start < WINDOW
                }
                self._kept = len(self._handshakes)
        if not window.allow(now, rate):
            retry = str(window.retry_after(now))
            raise Reject(429, "too many handshakes", [("Retry-After", retry)])


def _address(request: Request) -> str | None:
    return request.peer[0] if request.peer is not None else None
