"""The parsed upgrade request a channel sees: :class:`Request`, :class:`Headers`, :class:`Query`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, overload
from urllib.parse import parse_qsl, unquote

__all__ = ["Headers", "Query", "Request"]


Pairs = Iterable[tuple[str, str]]
T = TypeVar("T")


class MultiDict(Mapping[str, str]):
    """An immutable mapping that keeps repeated keys.

    ``d[key]`` and ``d.get(key)`` give the *first* value; :meth:`get_all` gives every
    value in the order received; iterating gives each distinct key once. The pairs are
    indexed on first use: a request a channel never looks into costs nothing more.
    """

    __slots__ = ("_index", "_items", "_source")

    def __init__(self, items: Pairs | str = ()) -> None:
        self._source: Pairs | str | None = items
        self._items: tuple[tuple[str, str], ...] = ()
        self._index: dict[str, list[str]] | None = None

    @staticmethod
    def _fold(key: str) -> str:
        return key

    @staticmethod
    def _pairs(source: Pairs | str) -> Pairs:
        assert not isinstance(source, str)
        return source

    def _indexed(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            assert self._source is not None
            self._items = tuple(self._pairs(self._source))
            self._source = None
            index = {}
            for key, value in self._items:
                index.setdefault(self._fold(key), []).append(value)
            self._index = index
        return index

    def __getitem__(self, key: str) -> str:
        return self._indexed()[self._fold(key)][0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._fold(key) in self._indexed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._indexed())

    def __len__(self) -> int:
        return len(self._indexed())

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str | T) -> str | T: ...

    def get(self, key: str, default: object = None) -> object:
        """The first value of ``key``, or ``default`` when absent (no KeyError raised)."""
        values = self._indexed().get(self._fold(key))
        return values[0] if values else default

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key``, in order; ``[]`` when absent."""
        return list(self._indexed().get(self._fold(key), ()))

    def raw_items(self) -> tuple[tuple[str, str], ...]:
        """Every ``(key, value)`` pair as received, repeats included."""
        self._indexed()
        return self._items

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.raw_items())!r})"


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
        joined = ",".join(self._indexed().get(self._fold(key), ())).lower()
        return [token for token in map(str.strip, joined.split(",")) if token]


class Query(MultiDict):
    """The query string's parameters, percent-decoded, repeats kept (case-sensitive).

    Built from pairs, or from the raw query string (parsed on first use).
    """

    __slots__ = ()

    @staticmethod
    def _pairs(source: Pairs | str) -> Pairs:
        if isinstance(source, str):
            return parse_qsl(source, keep_blank_values=True)
        return source


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
            query=Query(query),
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
