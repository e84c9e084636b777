"""The architecture's promises that a test can check."""

from __future__ import annotations

import ast
import re
import runpy
import textwrap
from pathlib import Path

import pytest

import spoc_sockets

PACKAGE = Path(spoc_sockets.__file__).parent
ROOT = PACKAGE.parent
CORE = [
    "__init__.py",
    "channel.py",
    "connection.py",
    "deflate.py",
    "endpoint.py",
    "errors.py",
    "frames.py",
    "handshake.py",
    "hub.py",
    "limits.py",
    "request.py",
    "router.py",
    "session.py",
    "stats.py",
]
FORBIDDEN = {"asyncio", "trio", "threading", "socket", "selectors", "time", "_thread"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_never_imports_io_threads_or_clock(module: str) -> None:
    assert not imported_modules(PACKAGE / module) & FORBIDDEN


# Outside the sans-IO core: the adapters, the demo, and the built-in channels (applications
# of the core, which read a wall clock for timestamps and lock their shared room state).
ADAPTERS = {"asyncio.py", "trio.py", "threads.py", "asgi.py", "_listen.py", "__main__.py"}
ADAPTERS |= {"demo.py", "testing.py"}  # the in-memory adapter runs async hooks on asyncio
CHANNELS = {"chat.py", "stream.py", "seed.py"}
INTEGRATIONS = {"metrics.py"}  # optional: reads the core's stats for an exporter


def test_core_list_is_complete() -> None:
    present = {p.name for p in PACKAGE.glob("*.py")} - ADAPTERS - CHANNELS - INTEGRATIONS
    assert present == set(CORE)


@pytest.mark.parametrize("module", sorted(CHANNELS))
def test_channels_never_touch_sockets_or_event_loops(module: str) -> None:
    assert not imported_modules(PACKAGE / module) & {"asyncio", "trio", "socket", "selectors"}


def example_blocks() -> list[str]:
    """The Python blocks of the getting-started page (the public API by example)."""
    page = (ROOT / "docs" / "getting-started.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", page)
    return [textwrap.dedent(block) for block in blocks]


def test_getting_started_example_runs_as_written() -> None:
    blocks = [b for b in example_blocks() if "Router()" in b or "TestClient(router)" in b]
    api = blocks[0]
    testing = next(b for b in blocks if "TestClient(router)" in b)
    verify = "def verify(token):\n    return {'t': 'ada'}.get(token)\n"
    namespace: dict[str, object] = {}
    exec(compile(verify + api + testing, "getting-started.rst", "exec"), namespace)
    assert namespace["router"].upgraded == frozenset()  # type: ignore[attr-defined]


def test_quickstart_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "grace received 'hello'" in out
    assert "refused with 401" in out
    assert "upgraded connections left: 0" in out
