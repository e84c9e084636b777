"""The optional compiled masker (``spoc_sockets._speedups``) and its pure-Python twin.

Each masker there is must give RFC 6455 masking (wsproto's own masker is the reference)
for every length and every kind of bytes-like input, refuse bad arguments alike, and the
fast path must read the same with either. When the test command built the package with a
compiler, it sets ``SPOC_SOCKETS_REQUIRE_SPEEDUPS=1``: the compiled masker must then be
the one in use.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import XorMaskerSimple

from spoc_sockets import _fastpath
from spoc_sockets._fastpath import (
    MASKER,
    Assembling,
    Masker,
    PythonAssembler,
    assembler_compiled,
    unmask_compiled,
    unmask_python,
)

from .test_fastpath import EQUIVALENCE, Stream, run, simple, streams
from .test_properties import PROPERTY

BUILT = importlib.util.find_spec("spoc_sockets._speedups") is not None
MASKERS = {"python": unmask_python}
ASSEMBLERS: dict[str, Callable[[int, bytes | bytearray], Assembling]] = {"python": PythonAssembler}
if unmask_compiled is not None and assembler_compiled is not None:
    MASKERS["compiled"] = unmask_compiled
    ASSEMBLERS["compiled"] = assembler_compiled
LARGE = [125, 126, 2047, 2048, 2049, 4099, 8192, 65536, 70_001, 2**20 + 3]


def reference(data: bytes, key: bytes) -> bytes:
    return bytes(XorMaskerSimple(key).process(bytearray(data)))


@contextmanager
def masker(unmask: Masker) -> Iterator[None]:
    """The fast path unmasks (and assembles) with ``unmask``'s kind meanwhile."""
    name = next(name for name, known in MASKERS.items() if known is unmask)
    saved = _fastpath.unmask, _fastpath.Assembler
    _fastpath.unmask, _fastpath.Assembler = unmask, ASSEMBLERS[name]
    try:
        yield
    finally:
        _fastpath.unmask, _fastpath.Assembler = saved


# -- which masker runs --------------------------------------------------------------------------


def test_the_compiled_masker_is_used_when_it_was_built() -> None:
    in_use = "compiled" if BUILT and os.environ.get("SPOC_SOCKETS_NO_SPEEDUPS") != "1" else "python"
    assert in_use == MASKER
    assert _fastpath.unmask is MASKERS[in_use]
    assert _fastpath.Assembler is ASSEMBLERS[in_use]
    if os.environ.get("SPOC_SOCKETS_REQUIRE_SPEEDUPS") == "1":
        assert BUILT, "spoc_sockets._speedups was not built (is there a C compiler?)"
        assert MASKER == "compiled"


# -- the same bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MASKERS)
@pytest.mark.parametrize("size", range(71))
def test_every_short_length(name: str, size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    assert MASKERS[name](data, key) == reference(data, key)


@settings(PROPERTY, max_examples=300)
@given(
    st.one_of(st.binary(max_size=70), st.sampled_from(LARGE).map(os.urandom)),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 7),
)
def test_the_maskers_agree_on_random_data(data: bytes, key: bytes, offset: int) -> None:
    """bytes, bytearray, and views starting anywhere in a buffer (unaligned) alike."""
    expected = reference(data, key)
    view = memoryview(b"\x00" * offset + data)[offset:]
    for unmask in MASKERS.values():
        assert unmask(data, key) == expected
        assert unmask(bytearray(data), bytearray(key)) == expected
        assert unmask(view, key) == expected


@pytest.mark.parametrize("name", MASKERS)
def test_the_result_is_new_bytes(name: str) -> None:
    source = bytearray(b"payload!" * 600)
    result = MASKERS[name](memoryview(source), b"\x00\x00\x00\x00")
    source[:] = bytes(len(source))
    assert type(result) is bytes and result == b"payload!" * 600


# -- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MASKERS)
@pytest.mark.parametrize("key", [b"", b"abc", b"abcde", bytearray(8)])
@pytest.mark.parametrize("size", [0, 3, 5000])
def test_a_mask_of_another_length_is_refused(name: str, key: bytes, size: int) -> None:
    with pytest.raises(ValueError, match=re.escape(f"the mask is 4 bytes, not {len(key)}")):
        MASKERS[name](bytes(size), key)


@pytest.mark.parametrize("name", MASKERS)
@pytest.mark.parametrize(
    ("data", "key"),
    [("text", b"abcd"), (None, b"abcd"), (42, b"abcd"), (b"data", "abcd"), (b"data", None)],
)
def test_what_is_not_bytes_is_refused(name: str, data: object, key: object) -> None:
    with pytest.raises(TypeError):
        MASKERS[name](data, key)  # type: ignore[arg-type]


def test_the_compiled_masker_takes_two_arguments_only() -> None:
    if unmask_compiled is None:  # nothing compiled to call: the pure-Python one is in use
        assert MASKER == "python"
        return
    with pytest.raises(TypeError, match=re.escape("takes 2 arguments (data, mask), not 3")):
        unmask_compiled(b"data", b"abcd", b"more")  # type: ignore[call-arg]
    with pytest.raises(BufferError):  # every other byte of a buffer: not contiguous
        unmask_compiled(memoryview(bytes(16))[::2], b"abcd")


def test_the_environment_can_turn_the_compiled_ones_off_at_run_time() -> None:
    code = "from spoc_sockets import _fastpath as f; print(f.MASKER, f.Assembler.__name__)"
    env = {**os.environ, "SPOC_SOCKETS_NO_SPEEDUPS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["python", "PythonAssembler"], result.stderr


# -- the assemblers ----------------------------------------------------------------------------


def assembled(name: str, data: bytes, key: bytes, cuts: list[int]) -> tuple[bytes, list[int]]:
    """``data`` fed to an assembler in the pieces ``cuts`` make; the message and what
    each feed said was missing."""
    assembler = ASSEMBLERS[name](len(data), key)
    bounds = [0, *sorted(set(cuts)), len(data)]
    missing = [assembler.feed(memoryview(data)[a:b]) for a, b in pairwise(bounds)]
    return assembler.take(), missing


@settings(PROPERTY, max_examples=200)
@given(
    st.one_of(st.binary(max_size=70), st.sampled_from(LARGE).map(os.urandom)),
    st.binary(min_size=4, max_size=4),
    st.lists(st.integers(0, 2**20 + 3), max_size=12),
)
def test_the_assemblers_unmask_a_payload_however_it_is_cut(
    data: bytes, key: bytes, cuts: list[int]
) -> None:
    cuts = [cut for cut in cuts if cut <= len(data)]
    bounds = [0, *sorted(set(cuts)), len(data)]
    for name in ASSEMBLERS:
        message, missing = assembled(name, data, key, cuts)
        assert type(message) is bytes and message == reference(data, key)
        assert missing == [len(data) - end for end in bounds[1:]]


def exactly(text: str) -> str:
    """A ``match`` pattern for ``text`` and nothing more (each assembler words it alike)."""
    return f"^{re.escape(text)}$"


@pytest.mark.parametrize("name", ASSEMBLERS)
def test_an_assembler_refuses_what_does_not_fit(name: str) -> None:
    make = ASSEMBLERS[name]
    with pytest.raises(ValueError, match=exactly("the mask is 4 bytes, not 3")):
        make(10, b"abc")
    with pytest.raises(ValueError, match=exactly("a length is 0 or more, not -1")):
        make(-1, b"abcd")
    assembler = make(4, b"abcd")
    with pytest.raises(TypeError):
        assembler.feed("text")  # type: ignore[arg-type]
    assert assembler.feed(b"ab") == 2
    with pytest.raises(ValueError, match=exactly("3 bytes given where 2 are missing")):
        assembler.feed(b"cde")
    with pytest.raises(ValueError, match=exactly("the message is not full: 2 of 4 bytes")):
        assembler.take()
    assert assembler.feed(b"cd") == 0
    assert assembler.take() == reference(b"abcd", b"abcd")
    for again in (assembler.take, lambda: assembler.feed(b"")):
        with pytest.raises(ValueError, match=exactly("the message was taken")):
            again()


@pytest.mark.parametrize("name", ASSEMBLERS)
def test_an_assembler_keeps_no_view_of_a_piece(name: str) -> None:
    assembler = ASSEMBLERS[name](8, b"\x00\x00\x00\x00")
    piece = bytearray(b"payload!")
    assembler.feed(memoryview(piece))
    piece[:] = bytes(8)
    assert assembler.take() == b"payload!"


def test_the_compiled_assembler_takes_its_arguments_by_position() -> None:
    if assembler_compiled is None:  # nothing compiled to call: the pure-Python one is in use
        assert MASKER == "python"
        return
    with pytest.raises(TypeError, match="no keyword arguments"):
        assembler_compiled(4, mask=b"abcd")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        assembler_compiled("4", b"abcd")  # type: ignore[arg-type]


# -- the fast path reads the same with either ----------------------------------------------------


@settings(EQUIVALENCE, max_examples=300)
@given(streams())
def test_the_fast_path_answers_as_wsproto_does_with_the_python_masker(stream: Stream) -> None:
    with masker(unmask_python):
        assert run(stream, fast_path=True) == run(stream, fast_path=False)


@pytest.mark.parametrize("name", MASKERS)
@pytest.mark.parametrize("size", [0, 5, 2049, 70_001, 2**20])
@pytest.mark.parametrize("limit", [None, 2**20])  # assembled as it comes within a limit
def test_a_binary_message_of_any_size_with_either_masker(
    name: str, size: int, limit: int | None
) -> None:
    payload = os.urandom(size)
    data = simple(0x2, payload, mask=os.urandom(4))
    stream = Stream(data, (len(data) // 3, len(data) // 2), (), False, {"max_message_size": limit})
    with masker(MASKERS[name]):
        outcome = run(stream, fast_path=True)
    assert outcome.messages == [payload]
    assert outcome == run(stream, fast_path=False)
