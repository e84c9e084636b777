"""The short soak (``scripts/soak.py``) on every adapter: connections under fault injection.

Each adapter gets :data:`SECONDS` of load in its own server process; the soak's own
verdict is asserted: no message lost, every fault answered, every deadline honoured,
RSS back within 10% of the warm-up's peak, file descriptors back to their start,
``router.upgraded`` empty, closed connections freed without the cyclic collector, and
no traceback on the server. The thresholds are about leaks, not speed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
SECONDS = 30  # of load per adapter; the whole file stays under about four minutes
TIMEOUT = 300  # seconds before a hung soak fails the test


@pytest.mark.parametrize("adapter", ["asyncio", "trio", "threads", "asgi"])
def test_soak(adapter: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SOAK), f"--duration={SECONDS}", f"--adapter={adapter}"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    report = result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    verdict = lines[-1].strip() if lines else ""  # the table's row for this adapter
    assert result.returncode == 0, report
    assert verdict.startswith(adapter) and verdict.endswith(" ok"), report


def test_soak_refuses_a_bad_duration() -> None:
    result = subprocess.run(
        [sys.executable, str(SOAK), "--duration=-1"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "--duration is a positive number of seconds, not -1.0" in result.stderr
