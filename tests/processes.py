"""Servers run as real child processes: start one, wait (bounded) for the line that says
where it listens, read everything it printed, stop it with a signal."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
            start_new_session=True,  # its own process group: kill() reaches its children
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
        """Kill the process and whatever it started (workers hold the output pipe)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
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


ROOT = Path(__file__).resolve().parent.parent

#: the documented ASGI server setups: (command without the app, the line giving the port)
ASGI_SERVERS: dict[str, tuple[list[str], str]] = {
    f"uvicorn-{ws.rpartition(':')[2]}": (
        ["-m", "uvicorn", "--ws", ws, "--host", "127.0.0.1", "--port", "0"],
        r"Uvicorn running on http://127\.0\.0\.1:(\d+)",
    )
    for ws in ("spoc_sockets.uvicorn:WSProtocol", "wsproto", "websockets-sansio", "websockets")
}
ASGI_SERVERS["hypercorn"] = (
    ["-m", "hypercorn", "--bind", "127.0.0.1:0"],
    r"Running on http://127\.0\.0\.1:(\d+)",
)


@contextmanager
def asgi_server(name: str, *app: str) -> Iterator[tuple[ServerProcess, int]]:
    """``app`` (the server's options, if any, then ``module:attribute``, importable from
    the repository's root) served by the named setup of :data:`ASGI_SERVERS`; the process
    and its port."""
    arguments, ready = ASGI_SERVERS[name]
    with running([sys.executable, *arguments, *app], ROOT) as server:
        port = int(server.wait_for_line(ready).group(1))
        wait_until_listening(port, server.popen)  # hypercorn announces it a bit early
        yield server, port


def wait_until_listening(
    port: int, process: subprocess.Popen[Any], explain: Callable[[], str] = str
) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection; fail if ``process`` exits
    or ``STARTUP_TIMEOUT`` seconds pass first (with what ``explain()`` says)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    pause = threading.Event()
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pause.wait(0.02)
    status = process.poll()
    pytest.fail(f"nothing listens on 127.0.0.1:{port} (exit status {status}): {explain()}")
