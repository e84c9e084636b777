"""The ``serve`` fixtures: each behaviour test runs once per harness.

Every module ``harness_<name>.py`` here that defines ``HARNESS`` adds one (an adapter
serving over loopback); ``memory`` is the in-memory TestClient. ``serve`` gives every
harness; ``serve_bytes`` only those where the library itself parses the bytes (not ASGI,
where the server owns the HTTP parsing, the frames and the keepalive: a module says so
with ``SERVER_OWNS_BYTES = True``). ``serve_tls``, ``serve_shutdown_timeout`` and
``serve_drain_timeout`` give the harnesses that honour that adapter option (a module's
``OPTIONS``; see :class:`.harness.Options`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from . import harness
from .harness import Harness, memory

HARNESSES: dict[str, Harness] = {"memory": memory}
BYTES: set[str] = {"memory"}
TAKING: dict[str, frozenset[str]] = {"memory": harness.OPTIONS}  # the options each honours
for path in sorted(Path(__file__).parent.glob("harness_*.py")):
    module = importlib.import_module(f"{__package__}.{path.stem}")
    if hasattr(module, "HARNESS"):
        name = path.stem.removeprefix("harness_")
        HARNESSES[name] = module.HARNESS
        TAKING[name] = module.OPTIONS
        if not getattr(module, "SERVER_OWNS_BYTES", False):
            BYTES.add(name)


def taking(option: str) -> list[str]:
    """The harnesses that honour this adapter option."""
    return sorted(name for name in HARNESSES if option in TAKING[name])


@pytest.fixture(params=sorted(HARNESSES))
def serve(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]


@pytest.fixture(params=sorted(BYTES))
def serve_bytes(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]


# harnesses whose server awaits async def hooks (the threads adapter refuses them)
AWAITING = sorted(set(HARNESSES) - {"threads"})


@pytest.fixture(params=AWAITING)
def serve_async(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]


@pytest.fixture(params=sorted(set(AWAITING) & BYTES))
def serve_async_bytes(request: pytest.FixtureRequest) -> Harness:
    """Harnesses that await async hooks and where the library parses the bytes."""
    return HARNESSES[request.param]


@pytest.fixture(params=taking("tls"))
def serve_tls(request: pytest.FixtureRequest) -> Harness:
    """Harnesses that serve TLS (not ``memory``: it has no transport to encrypt)."""
    return HARNESSES[request.param]


@pytest.fixture(params=taking("shutdown_timeout"))
def serve_shutdown_timeout(request: pytest.FixtureRequest) -> Harness:
    """Harnesses whose adapter takes ``shutdown_timeout`` (``ASGIApp`` does not: the ASGI
    server owns that deadline; ``memory`` runs it in virtual time)."""
    return HARNESSES[request.param]


@pytest.fixture(params=taking("drain_timeout"))
def serve_drain_timeout(request: pytest.FixtureRequest) -> Harness:
    """Harnesses whose adapter takes ``drain_timeout`` (``ASGIApp`` does not: the ASGI
    server writes the bytes; ``memory`` runs it in virtual time)."""
    return HARNESSES[request.param]
