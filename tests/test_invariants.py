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


# The layout says which layer a module belongs to (docs/architecture.rst):
#: the adapters and the command line, the only top-level modules outside the core
#: (``testing`` is the in-memory adapter: it runs async hooks on asyncio; ``uvicorn`` is
#: the ASGI adapter's WebSocket protocol for uvicorn)
ADAPTERS = {
    "asyncio",
    "trio",
    "threads",
    "asgi",
    "uvicorn",
    "testing",
    "_listen",
    "cli",
    "__main__",
}
#: top-level modules that sit on the core without being part of it: the Node module's
#: names (they build the built-in channels) and the Prometheus exporter
ON_TOP = {"node_compat", "metrics"}
#: subpackages: applications of the core (``channels``) and the demo, which runs adapters
APPLICATIONS = {"channels"}
DEMO = {"demo"}


def core_modules() -> list[str]:
    """The protocol core: every top-level module but the adapters (and what sits on top)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return sorted(modules - ADAPTERS - ON_TOP)


def application_modules() -> list[str]:
    return sorted(
        str(path.relative_to(PACKAGE))
        for package in APPLICATIONS
        for path in (PACKAGE / package).rglob("*.py")
    )


def test_every_module_and_folder_has_a_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == APPLICATIONS | DEMO
    assert {"_connection", "_hub", "router", "channel"} <= set(core_modules())
    assert {p.stem for p in PACKAGE.glob("*.py")} >= ADAPTERS | ON_TOP


@pytest.mark.parametrize("module", core_modules())
def test_core_never_imports_io_threads_or_clock(module: str) -> None:
    assert not imported_modules(PACKAGE / f"{module}.py") & FORBIDDEN


@pytest.mark.parametrize("module", core_modules())
def test_core_imports_nothing_outside_the_core(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    relative = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
    }
    compiled = {p.stem for p in PACKAGE.glob("*.pyi")}  # the core's compiled modules (stubs)
    outside = relative - set(core_modules()) - compiled - {""}
    if module == "__init__":  # the public names: re-exports the CLI runner and Node names
        outside -= {"cli", "node_compat"}
    assert not outside


@pytest.mark.parametrize("module", application_modules())
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
