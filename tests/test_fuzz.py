"""The fuzz harnesses: the seed corpus replays clean, the invariants can fail, and a short
coverage-guided run of each harness (atheris, a few seconds) finds nothing.

The long run is documented in ``fuzz/README.md``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from spoc_sockets import ServerConnection

FUZZ = Path(__file__).parent.parent / "fuzz"
HARNESSES = {"handshake": "fuzz_handshake.py", "frames": "fuzz_frames.py"}
MUTATIONS = 300  # inputs run per harness beyond the seeds (a few seconds)
CAP = 90  # seconds of fuzzing at most, on a loaded machine
BOUND = 150  # seconds the subprocess may take, start-up included


@pytest.fixture
def driver() -> Iterator[ModuleType]:
    sys.path.insert(0, str(FUZZ))
    try:
        import driver

        yield driver
    finally:
        sys.path.remove(str(FUZZ))


def seeds(corpus: str) -> list[Path]:
    return sorted((FUZZ / "corpus" / corpus).iterdir())


@pytest.mark.parametrize("corpus", sorted(HARNESSES))
def test_the_seed_corpus_replays_without_a_finding(driver: ModuleType, corpus: str) -> None:
    paths = seeds(corpus)
    assert len(paths) >= 40
    for path in paths:
        data = path.read_bytes()
        prefix = driver.upgrade(data[2]) if corpus == "frames" else b""
        driver.run(data, prefix)


def test_the_harness_reports_an_error_the_core_swallowed(
    driver: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ServerConnection, *args: object) -> None:
        raise RuntimeError("a bug in the core")

    monkeypatch.setattr(ServerConnection, "_on_data", broken)
    core = logging.getLogger("spoc_sockets.core")
    monkeypatch.setattr(core, "handlers", [])  # this error is expected: only the harness sees it
    data = next(p for p in seeds("frames") if p.name.startswith("text-0-")).read_bytes()
    with pytest.raises(AssertionError, match="a bug in the core"):
        driver.run(data, driver.upgrade(0))


def test_the_harness_reports_output_without_bound(
    driver: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "OUTPUT_FACTOR", 0)
    monkeypatch.setattr(driver, "OUTPUT_SLACK", 100)  # less than a 101 response
    data = next(p for p in seeds("handshake") if p.name.startswith("echo-")).read_bytes()
    with pytest.raises(AssertionError, match="written"):
        driver.run(data)


def test_the_harness_reports_a_connection_left_upgraded(
    driver: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServerConnection, "ended", lambda self, now: None)  # never released
    data = next(p for p in seeds("handshake") if p.name.startswith("echo-")).read_bytes()
    with pytest.raises(AssertionError, match="still"):
        driver.run(data)


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_a_short_coverage_guided_run_finds_nothing(name: str, tmp_path: Path) -> None:
    found = tmp_path / "corpus"  # new inputs go here, the seeds stay as they are
    found.mkdir()
    command = [
        sys.executable,
        str(FUZZ / HARNESSES[name]),
        str(found),
        str(FUZZ / "corpus" / name),
        f"-runs={len(seeds(name)) + MUTATIONS}",
        f"-max_total_time={CAP}",
        "-max_len=8192",
        "-timeout=10",
        "-rss_limit_mb=1024",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BOUND, check=False)
    log = result.stderr[-3000:]
    assert result.returncode == 0, log
    assert "Done " in log and "stat::number_of_executed_units" in log, log
    executed = int(log.split("stat::number_of_executed_units:")[1].split()[0])
    assert executed > len(seeds(name)), log  # it fuzzed beyond replaying the seeds
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))


@pytest.mark.parametrize(("split", "pieces"), [(0, 1), (1, 256), (100, 31)])
def test_an_input_is_cut_as_its_first_byte_says(
    driver: ModuleType, monkeypatch: pytest.MonkeyPatch, split: int, pieces: int
) -> None:
    fed: list[bytes] = []
    feed = driver.Run.feed
    monkeypatch.setattr(
        driver.Run, "feed", lambda self, chunk: fed.append(chunk) or feed(self, chunk)
    )
    stream = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 3044  # 3,072 bytes: 256 x 12
    driver.run(bytes([split, 0, 0]) + stream)
    assert fed[-1] == b""  # the end of the stream
    assert len(fed) - 1 == pieces and b"".join(fed) == stream
