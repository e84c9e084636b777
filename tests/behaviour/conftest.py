"""The ``serve`` fixture: each behaviour test runs once per harness.

Every module ``harness_<name>.py`` here that defines ``HARNESS`` adds one (an adapter
serving over loopback); ``memory`` is the in-memory TestClient.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from .harness import Harness, memory

HARNESSES: dict[str, Harness] = {"memory": memory}
for path in sorted(Path(__file__).parent.glob("harness_*.py")):
    module = importlib.import_module(f"{__package__}.{path.stem}")
    if hasattr(module, "HARNESS"):
        HARNESSES[path.stem.removeprefix("harness_")] = module.HARNESS


@pytest.fixture(params=sorted(HARNESSES))
def serve(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]
