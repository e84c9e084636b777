"""The package as users install it: a real (non-editable) wheel in a fresh virtualenv,
with its compiled masker when a C compiler is there, and without it when there is none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import spoc_sockets

ROOT = Path(spoc_sockets.__file__).parent.parent
CHECK = """
import importlib, pkgutil, spoc_sockets
from importlib.resources import files
names = [m.name for m in pkgutil.walk_packages(spoc_sockets.__path__, "spoc_sockets.")]
for name in names:
    if name not in ("spoc_sockets.trio", "spoc_sockets.__main__"):  # trio: an extra
        importlib.import_module(name)
assert (files("spoc_sockets") / "py.typed").is_file()
for name in ("index.html", "app.js", "style.css", "spoc-client.js", "spoc-client.d.ts"):
    assert (files("spoc_sockets.demo") / "static" / name).is_file(), name
from spoc_sockets._fastpath import MASKER
print(len(names), MASKER)
"""


def install(tmp_path: Path, **env: str) -> tuple[int, str]:
    """Install a clean copy of the checkout with ``env`` set; the number of modules it
    imports, and the masker it uses."""
    source = tmp_path / "source"  # a clean copy: no build/ (or .so) left over from another
    junk = shutil.ignore_patterns(
        "build", "*.egg-info", ".venv*", "_build", ".git", "*cache*", "*.so", "*.pyd"
    )
    shutil.copytree(ROOT, source, ignore=junk)
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, **env},
    )
    site = subprocess.run(
        [sys.executable, "-c", "import h11, wsproto, os; print(os.path.dirname(h11.__path__[0]))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    result = subprocess.run(
        [python, "-c", f"import sys; sys.path.append({site!r})\n" + CHECK],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules, masker = result.stdout.split()
    return int(modules), masker


def test_a_plain_install_carries_every_module_and_file(tmp_path: Path) -> None:
    modules, masker = install(tmp_path)
    assert modules >= 20
    if os.environ.get("SPOC_SOCKETS_REQUIRE_SPEEDUPS") == "1":  # the test command sets it
        assert masker == "compiled"
    assert masker in ("compiled", "python")


def test_without_a_c_compiler_the_package_is_pure_python(tmp_path: Path) -> None:
    modules, masker = install(tmp_path, CC="false")  # the compiler fails: no accelerator
    assert modules >= 20 and masker == "python"


def test_the_accelerator_can_be_left_out(tmp_path: Path) -> None:
    modules, masker = install(tmp_path, SPOC_SOCKETS_NO_SPEEDUPS="1")
    assert modules >= 20 and masker == "python"
