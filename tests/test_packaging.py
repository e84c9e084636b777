"""The package as users install it: a real (non-editable) wheel in a fresh virtualenv."""

from __future__ import annotations

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
print(len(names))
"""


def test_a_plain_install_carries_every_module_and_file(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a clean copy: no build/ left over from another build
    junk = shutil.ignore_patterns("build", "*.egg-info", ".venv*", "_build", ".git", "*cache*")
    shutil.copytree(ROOT, source, ignore=junk)
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
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
    assert int(result.stdout) >= 20
