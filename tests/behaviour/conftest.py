"""The ``serve`` fixtures: each behaviour test runs once per harness.

Every module ``harness_<name>.py`` here that defines ``HARNESS`` adds one (an adapter
serving over loopback); ``memory`` is the in-memory TestClient. ``serve`` gives every
harness; ``serve_bytes`` only those where the library itself parses the bytes (not ASGI,
where the server owns the HTTP parsing, the frames and the keepalive: a module says so
with ``SERVER_OWNS_BYTES = True``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .harness import Harness, memory

HARNESSES: dict[str, Harness] = {"memory": memory}
BYTES: set[str] = {"memory"}
for path in sorted(Path(__file__).parent.glob("harness_*.py")):
    module = importlib.import_module(f"{__package__}.{path.stem}")
    if hasattr(module, "HARNESS"):
        name = path.stem.removeprefix("harness_")
        HARNESSES[name] = module.HARNESS
        if not getattr(module, "SERVER_OWNS_BYTES", False):
            BYTES.add(name)


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
