"""User code typed as the docs say passes ``mypy --strict``; ``Router.get`` at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spoc_sockets import ChannelServer, Router, UsageError

HERE = Path(__file__).parent


def test_user_code_passes_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(HERE / "typing" / "user_code.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_refuses_a_plain_string_for_origins(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from spoc_sockets import ChannelServer\n"
        "class C(ChannelServer):\n"
        "    origins = 'https://app.example'\n"
        "C(subprotocols='chat')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "bad.py:3: error: Incompatible types in assignment" in result.stdout
    assert "bad.py:4: error" in result.stdout


def test_the_user_code_runs() -> None:
    sys.path.insert(0, str(HERE / "typing"))
    try:
        import user_code

        assert user_code.check() == "hello"
        assert user_code.notifications is user_code.router.channels["/notifications"]
    finally:
        sys.path.remove(str(HERE / "typing"))


def test_get_names_what_is_missing_or_ambiguous() -> None:
    class A(ChannelServer):
        pass

    router = Router()
    with pytest.raises(UsageError, match="one A is asked for, and none is registered"):
        router.get(A)
    first = router.add("/a", A())
    assert router.get(A) is first
    router.add("/b", A())
    with pytest.raises(UsageError, match="several are: give the path"):
        router.get(A)
    assert router.get(A, "/a") is first
