"""The parsed upgrade request a channel sees: :class:`Request`, :class:`Headers`, :class:`Query`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

__all__ = ["Headers", "Query", "Request"]


class MultiDict(Mapping[str, str]):
    """An immutable mapping that keeps repeated keys.

    ``d[key]`` and ``d.get(key)`` give the *first* value; :meth:`get_all` gives every
    value in the order received; iterating gives each distinct key once.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = tuple(items)
        index: dict[str, list[str]] = {}
        for key, value in self._items:
            index.setdefault(self._fold(key), []).append(value)
        self._index = index

    @staticmethod
    def _fold(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        return self._index[self._fold(key)][0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._fold(key) in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key``, in order; ``[]`` when absent."""
        return list(self._index.get(self._fold(key), ()))

    def raw_items(self) -> tuple[tuple[str, str], ...]:
        """Every ``(key, value)`` pair as received, repeats included."""
        return self._items

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._items)!r})"


class Headers(MultiDict):
    """HTTP headers: case-insensitive keys (stored lower-case), repeats kept."""

    __slots__ = ()

    @staticmethod
    def _fold(key: str) -> str:
        return key.lower()

    def tokens(self, key: str) -> list[str]:
        """The comma-separated tokens of every ``key`` header, stripped and lower-cased.

        ``Connection: keep-alive, Upgrade`` gives ``["keep-alive", "upgrade"]``.
        """
        return [
            token.strip().lower()
            for value in self.get_all(key)
            for token in value.split(",")
            if token.strip()
        ]


class Query(MultiDict):
    """The query string's parameters, percent-decoded, repeats kept (case-sensitive)."""

    __slots__ = ()


@dataclass(frozen=True)
class Request:
    """The HTTP upgrade request, as the channel's hooks see it.

    ``path`` is percent-decoded; ``target`` is the raw request target as received.
    ``path_params`` holds the values of the channel's ``{name}`` path segments.
    """

    method: str
    target: str
    path: str
    query: Query
    headers: Headers
    peer: tuple[str, int] | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        peer: tuple[str, int] | None = None,
    ) -> Request:
        """Build a request from its decoded parts (used by the core and the adapters)."""
        raw_path, _, query = target.partition("?")
        return cls(
            method=method,
            target=target,
            path=unquote(raw_path),
            query=Query(parse_qsl(query, keep_blank_values=True)),
            headers=Headers(headers),
            peer=peer,
        )

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, or ``None`` when the client sent none."""
        return self.headers.get("origin")

    @property
    def subprotocols(self) -> tuple[str, ...]:
        """The subprotocols the client offered, in its order of preference."""
        return tuple(
            token.strip()
            for value in self.headers.get_all("sec-websocket-protocol")
            for token in value.split(",")
            if token.strip()
        )

    @property
    def cookies(self) -> dict[str, str]:
        """The ``Cookie`` header's pairs (the first value wins for a repeated name)."""
        cookies: dict[str, str] = {}
        for value in self.headers.get_all("cookie"):
            for pair in value.split(";"):
                name, sep, content = pair.partition("=")
                name = name.strip()
                if sep and name and name not in cookies:
                    cookies[name] = unquote(content.strip().strip('"'))
        return cookies
