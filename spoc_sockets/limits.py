"""Limits: the validation every option shares, and counting over time windows.

Every numeric option of the library (the router's, the channels', the built-in
channels') is checked here, so a wrong value is refused the same way everywhere: a
:class:`~spoc_sockets.UsageError` that names the option and the value. Nothing here
reads a clock: the caller passes ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from .errors import UsageError

__all__ = [
    "WINDOW",
    "Number",
    "RateWindow",
    "check_flag",
    "check_number",
    "check_numbers",
    "shown",
]

#: Seconds over which the rate limits count (``max_control_rate``, ``max_handshake_rate``).
WINDOW = 10.0


def shown(value: object) -> str:
    """``value`` as an error message shows it: its ``repr``, at most 80 characters."""
    try:
        text = repr(value)
    except Exception:  # an int too long to print, a repr that raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float: no clock or rate can use it
        return False


def check_number(
    name: str, value: object, integer: bool, optional: bool, *, minimum: float | None = None
) -> None:
    """A finite number (an ``int`` where ``integer``; never a ``bool``) above zero, or at
    least ``minimum`` when one is given; ``None`` too where ``optional``."""
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
        or not _finite(value)
        or (value <= 0 if minimum is None else value < minimum)
    ):
        kind = "whole number" if integer else "number"
        kind = f"a positive {kind}" if minimum is None else f"a {kind} >= {minimum:g}"
        raise UsageError(f"{name} is {kind}{' or None' if optional else ''}, not {shown(value)}")


class Number(NamedTuple):
    """What a numeric option takes (see :func:`check_number`)."""

    integer: bool
    optional: bool = False
    minimum: float | None = None  # None: above zero


def check_numbers(owner: object, numbers: Mapping[str, Number]) -> None:
    """Check each of ``owner``'s attributes named in ``numbers``."""
    for name, (integer, optional, minimum) in numbers.items():
        check_number(name, getattr(owner, name), integer, optional, minimum=minimum)


def check_flag(name: str, value: object) -> None:
    """``True`` or ``False`` (not ``1``, not ``"yes"``)."""
    if not isinstance(value, bool):
        raise UsageError(f"{name} is True or False, not {shown(value)}")


class RateWindow:
    """Counts events in fixed windows of :data:`WINDOW` seconds: at most
    ``rate * WINDOW`` events per window, so bursts are allowed within a window."""

    __slots__ = ("count", "start")

    def __init__(self, now: float) -> None:
        self.start = now
        self.count = 0

    def allow(self, now: float, rate: float) -> bool:
        """Count one event at ``now``; False if it is over the limit."""
        if now - self.start >= WINDOW:
            self.start, self.count = now, 0
        self.count += 1
        return self.count <= rate * WINDOW

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window ends (for ``Retry-After``), at least 1."""
        return max(1, math.ceil(self.start + WINDOW - now))
