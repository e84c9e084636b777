"""Suite-wide checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _CoreErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_internal_errors_in_the_core() -> Iterator[None]:
    """The core turns an unexpected error into a dropped connection (so one bug never
    takes a server down); every test fails if that ever happened."""
    handler = _CoreErrors()
    logger = logging.getLogger("spoc_sockets.core")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]
