"""Limits: the validation every numeric option shares, and counting over time windows.

Nothing here reads a clock: the caller passes ``now``.
"""

from __future__ import annotations

import math

from .errors import UsageError

__all__ = ["WINDOW", "RateWindow", "check_number"]

#: Seconds over which the rate limits count (``max_control_rate``, ``max_handshake_rate``).
WINDOW = 10.0


def check_number(name: str, value: object, integer: bool, optional: bool) -> None:
    """A positive number (an ``int`` where ``integer``), or ``None`` where ``optional``."""
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
        or not (0 < value < math.inf)
    ):
        kind = "a positive whole number" if integer else "a positive number"
        raise UsageError(f"{name} is {kind}{' or None' if optional else ''}, not {value!r}")


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
