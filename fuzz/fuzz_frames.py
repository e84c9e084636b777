"""Coverage-guided fuzzing of the frame path: a valid upgrade, then the fuzzer's frames.

::

    python fuzz/fuzz_frames.py fuzz/corpus/frames -max_total_time=60

Flags bits 1 and 2 choose the handshake: permessage-deflate offered or not, and the
channel (``/echo`` compressed, ``/plain``, ``/rooms/{room}``). The upgrade request goes in
the same stream, so splits cut across it too. Clients mask their frames: a mask key of
``00 00 00 00`` leaves the payload readable for the fuzzer.
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
    driver.run(data, driver.upgrade(data[2] if len(data) > 2 else 0))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
