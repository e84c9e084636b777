"""The ``serve`` fixture: each behaviour test runs once per harness."""

from __future__ import annotations

import pytest

from .harness import Harness, memory

HARNESSES: dict[str, Harness] = {"memory": memory}


@pytest.fixture(params=sorted(HARNESSES))
def serve(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]
