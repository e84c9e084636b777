"""Servers run as real child processes: start one, wait (bounded) for the line that says
where it listens, read everything it printed, stop it with a signal."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class ServerProcess:
    """A child process whose stdout and stderr (merged) are read line by line."""

    def __init__(self, command: Sequence[str], cwd: Path, env: dict[str, str] | None) -> None:
        self.command = list(command)
        self.popen = subprocess.Popen(
            self.command,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """The first line (from now on) matching ``pattern``; fails the test with the
        output so far if the process ends or ``timeout`` seconds pass first."""
        compiled = re.compile(pattern)
        try:
            while True:
                line = self._new.get(timeout=timeout)
                if line is None:
                    break
                match = compiled.search(line)
                if match is not None:
                    return match
        except queue.Empty:
            pass
        pytest.fail(f"{self.command}: no line matching {pattern!r}; output:\n{self.output}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum``; the exit status, once every line was read."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@contextmanager
def running(
    command: Sequence[str], cwd: Path, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """The process, killed on the way out if it still runs."""
    process = ServerProcess(command, cwd, env)
    try:
        yield process
    finally:
        process.kill()
