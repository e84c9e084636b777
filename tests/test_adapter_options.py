"""The adapters' own keywords (``backlog``, ``reuse_port``, ``ssl``) are checked when the
server is made: a wrong value raises UsageError naming the keyword and the value, the
same on asyncio, trio and threads."""

from __future__ import annotations

import asyncio
import inspect
import ssl
from functools import partial
from typing import Any

import pytest
import trio

import spoc_sockets.asyncio
import spoc_sockets.threads
import spoc_sockets.trio
from spoc_sockets import Router, UsageError

HOST = "127.0.0.1"


def make_asyncio(**options: Any) -> None:
    async def make() -> None:
        spoc_sockets.asyncio.serve(Router(), HOST, 0, **options)

    asyncio.run(make())


def make_trio(**options: Any) -> None:
    trio.run(lambda: spoc_sockets.trio.serve(Router(), HOST, 0, **options))


def make_threads(**options: Any) -> None:
    spoc_sockets.threads.serve(Router(), HOST, 0, **options).close()


ADAPTERS = {"asyncio": make_asyncio, "trio": make_trio, "threads": make_threads}

BAD = [
    ("backlog", 0),
    ("backlog", -1),
    ("backlog", 1.5),
    ("backlog", 128.0),
    ("backlog", "128"),
    ("backlog", True),
    ("backlog", None),
    ("backlog", float("nan")),
    ("backlog", float("inf")),
    ("reuse_port", 1),
    ("reuse_port", "yes"),
    ("reuse_port", None),
    ("reuse_port", 0.0),
    ("ssl", "cert.pem"),
    ("ssl", True),
    ("ssl", 1),
    ("ssl", {"certfile": "cert.pem"}),
    ("ssl", ssl.SSLContext),  # the class, not a context
]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize(("keyword", "value"), BAD)
def test_a_wrong_keyword_is_refused_naming_it_and_its_value(
    adapter: str, keyword: str, value: object
) -> None:
    with pytest.raises(UsageError) as refused:
        ADAPTERS[adapter](**{keyword: value})
    message = str(refused.value)
    assert message.startswith(f"{keyword} is "), message
    assert message.endswith(f"not {value!r}"), message


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_the_adapters_share_one_backlog_default(adapter: str) -> None:
    """128, the kernel's traditional SOMAXCONN (docs/options.rst says why)."""
    module = getattr(spoc_sockets, adapter)
    assert inspect.signature(module.serve).parameters["backlog"].default == 128


async def listen_asyncio(**options: Any) -> None:
    async with spoc_sockets.asyncio.serve(Router(), HOST, 0, **options) as server:
        assert server.port > 0


async def listen_trio(**options: Any) -> None:
    async with trio.open_nursery() as nursery:
        start = partial(spoc_sockets.trio.serve, Router(), HOST, 0, **options)
        server = await nursery.start(start)
        assert server.port > 0
        await server.aclose()


def listen_threads(**options: Any) -> None:
    with spoc_sockets.threads.serve(Router(), HOST, 0, **options) as server:
        assert server.port > 0


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_the_edges_of_the_keywords_are_accepted(adapter: str) -> None:
    options = {"backlog": 1, "reuse_port": True, "ssl": None}
    {
        "asyncio": lambda: asyncio.run(listen_asyncio(**options)),
        "trio": lambda: trio.run(partial(listen_trio, **options)),
        "threads": lambda: listen_threads(**options),
    }[adapter]()
