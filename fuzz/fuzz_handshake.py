"""Coverage-guided fuzzing of the handshake path: the whole stream comes from the fuzzer.

::

    python fuzz/fuzz_handshake.py fuzz/corpus/handshake -max_total_time=60

(libFuzzer options after the corpus folders; see fuzz/README.md.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports():
    import driver
    import h11
    import wsproto

    import spoc_sockets

assert h11 and wsproto and spoc_sockets  # instrumented for coverage


def test_one_input(data: bytes) -> None:
    driver.run(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
