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
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import XorMaskerSimple

from spoc_sockets import _fastpath
from spoc_sockets._fastpath import MASKER, Masker, unmask_compiled, unmask_python

from .test_fastpath import EQUIVALENCE, Stream, run, simple, streams
from .test_properties import PROPERTY

BUILT = importlib.util.find_spec("spoc_sockets._speedups") is not None
MASKERS = {"python": unmask_python}
if unmask_compiled is not None:
    MASKERS["compiled"] = unmask_compiled
LARGE = [125, 126, 2047, 2048, 2049, 4099, 8192, 65536, 70_001, 2**20 + 3]


def reference(data: bytes, key: bytes) -> bytes:
    return bytes(XorMaskerSimple(key).process(bytearray(data)))


@contextmanager
def masker(unmask: Masker) -> Iterator[None]:
    """The fast path unmasks with ``unmask`` meanwhile."""
    saved, _fastpath.unmask = _fastpath.unmask, unmask
    try:
        yield
    finally:
        _fastpath.unmask = saved


# -- which masker runs --------------------------------------------------------------------------


def test_the_compiled_masker_is_used_when_it_was_built() -> None:
    in_use = "compiled" if BUILT else "python"
    assert in_use == MASKER
    assert _fastpath.unmask is MASKERS[in_use]
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


# -- the fast path reads the same with either ----------------------------------------------------


@settings(EQUIVALENCE, max_examples=300)
@given(streams())
def test_the_fast_path_answers_as_wsproto_does_with_the_python_masker(stream: Stream) -> None:
    with masker(unmask_python):
        assert run(stream, fast_path=True) == run(stream, fast_path=False)


@pytest.mark.parametrize("name", MASKERS)
@pytest.mark.parametrize("size", [0, 5, 2049, 70_001, 2**20])
def test_a_binary_message_of_any_size_with_either_masker(name: str, size: int) -> None:
    payload = os.urandom(size)
    data = simple(0x2, payload, mask=os.urandom(4))
    stream = Stream(data, (len(data) // 3,), (), False, {"max_message_size": None})
    with masker(MASKERS[name]):
        outcome = run(stream, fast_path=True)
    assert outcome.messages == [payload]
    assert outcome == run(stream, fast_path=False)
