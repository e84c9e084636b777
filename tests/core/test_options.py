"""Every option, attacked: wrong types, out of range, a bool for a number, a string for
a collection. Each is refused when the router or the channel is made, with a
:class:`UsageError` that names the option and shows the value; nothing waits for the
first connection to fail. (The defaults themselves are checked against the docs'
reference table in test_defaults.py.)"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from spoc_sockets import ChannelServer, Router, UsageError
from spoc_sockets.channels.chat import ChatServer
from spoc_sockets.channels.stream import StreamServer
from spoc_sockets.limits import Number, check_number, shown

Make = Callable[..., object]

OWNERS: list[tuple[Make, dict[str, Number]]] = [
    (Router, Router.NUMBERS),
    (ChannelServer, ChannelServer.NUMBERS),
    (ChatServer, ChatServer.NUMBERS),
    (StreamServer, StreamServer.NUMBERS),
]
NUMERIC = [
    pytest.param(make, name, number, id=f"{getattr(make, '__name__', make)}.{name}")
    for make, numbers in OWNERS
    for name, number in numbers.items()
]


def refused(make: Make, option: str, value: object) -> str:
    """The message of the UsageError that ``make(option=value)`` raises."""
    with pytest.raises(UsageError) as error:
        make(**{option: value})
    message = str(error.value)
    assert option in message, message
    assert shown(value) in message, message
    return message


#: never a number, whatever the option
NOT_NUMBERS: list[object] = [
    "20",
    "",
    b"20",
    True,
    False,
    [20],
    (20,),
    {"value": 20},
    object(),
    math.nan,
    math.inf,
    -math.inf,
    10**400,  # an int too large for a float: no clock could add it
    1j,
]


@pytest.mark.parametrize(("make", "option", "number"), NUMERIC)
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_a_numeric_option_refuses_what_is_not_a_finite_number(
    make: Make, option: str, number: Number, value: object
) -> None:
    refused(make, option, value)


@pytest.mark.parametrize(("make", "option", "number"), NUMERIC)
def test_a_numeric_option_refuses_what_is_below_its_range(
    make: Make, option: str, number: Number
) -> None:
    least = 0 if number.minimum is None else number.minimum
    below = [-1, -0.5, least - 1]
    if number.minimum is None:
        below += [0, 0.0, -0.0]
    for value in below:
        message = refused(make, option, value)
        assert ("positive" if number.minimum is None else f">= {least:g}") in message


@pytest.mark.parametrize(("make", "option", "number"), NUMERIC)
def test_a_count_is_a_whole_number_and_a_time_or_rate_may_be_a_fraction(
    make: Make, option: str, number: Number
) -> None:
    if number.integer:
        assert "whole number" in refused(make, option, 2.5)
        assert "whole number" in refused(make, option, 2.0)  # not an int, even if whole
    else:
        made = make(**{option: 2.5})
        assert getattr(made, option) == 2.5


@pytest.mark.parametrize(("make", "option", "number"), NUMERIC)
def test_none_is_no_limit_only_where_the_option_says_so(
    make: Make, option: str, number: Number
) -> None:
    if number.optional:
        assert getattr(make(**{option: None}), option) is None
    else:
        assert "or None" not in refused(make, option, None)


@pytest.mark.parametrize(("make", "option", "number"), NUMERIC)
def test_the_least_value_of_a_range_is_accepted(make: Make, option: str, number: Number) -> None:
    least = 1 if number.minimum is None else number.minimum
    if number.integer or least == int(least):
        least = int(least)
    others: dict[str, int] = {}
    if option == "max_buffered_amount" and make in (ChatServer, StreamServer):
        least = 2  # a page of history, an init segment (at least 1 byte) fits in half
        others = {"history_page_bytes": 1} if make is ChatServer else {"max_init_size": 1}
    made = make(**{option: least}, **others)
    assert getattr(made, option) == least


@pytest.mark.parametrize(("make", "option", "number"), NUMERIC)
def test_a_bad_value_set_as_a_class_attribute_is_refused_too(
    make: Make, option: str, number: Number
) -> None:
    if make is Router:
        return  # the router's options are constructor keywords only
    assert isinstance(make, type)
    loose = type("Loose", (make,), {option: "20"})
    with pytest.raises(UsageError, match=f"{option} is .*, not '20'"):
        loose()


def test_the_message_says_what_the_option_takes_and_what_it_got() -> None:
    with pytest.raises(UsageError) as error:
        ChannelServer(ping_interval="20")  # type: ignore[arg-type]
    assert str(error.value) == "ping_interval is a positive number or None, not '20'"
    with pytest.raises(UsageError) as error:
        Router(handshake_timeout=-1)
    assert str(error.value) == "handshake_timeout is a positive number, not -1"
    with pytest.raises(UsageError) as error:
        ChatServer(replay_messages=True)
    assert str(error.value) == "replay_messages is a whole number >= 0, not True"
    with pytest.raises(UsageError) as error:
        ChatServer(burst=0.5)
    assert str(error.value) == "burst is a number >= 1, not 0.5"


def test_a_value_too_long_to_show_is_shown_short() -> None:
    with pytest.raises(UsageError) as error:
        ChannelServer(close_timeout="x" * 10_000)  # type: ignore[arg-type]
    assert len(str(error.value)) < 150 and str(error.value).endswith("...")
    with pytest.raises(UsageError, match=r"max_fragments .* not <int>"):
        ChannelServer(max_fragments=-(10**5000))  # too long for repr() itself


def test_check_number_keeps_its_positional_form() -> None:
    """Code outside this module calls it as ``check_number(name, value, integer, optional)``."""
    check_number("drain_timeout", 5.0, False, False)
    check_number("shutdown_timeout", None, False, True)
    with pytest.raises(UsageError, match="drain_timeout is a positive number, not -5"):
        check_number("drain_timeout", -5, False, False)


# -- flags, choices, collections ----------------------------------------------------------


@pytest.mark.parametrize("value", [1, 0, "yes", "True", None, [True]], ids=repr)
@pytest.mark.parametrize(
    ("make", "option"),
    [(ChannelServer, "compression"), (ChatServer, "trust_user_param"), (Router, "fast_path")],
)
def test_a_flag_is_true_or_false_and_nothing_else(make: Make, option: str, value: object) -> None:
    assert "True or False" in refused(make, option, value)


@pytest.mark.parametrize(
    "value", ["block", "CLOSE", "", None, 0, ["close"], ("close", "drop")], ids=repr
)
def test_overflow_is_close_or_drop(value: object) -> None:
    assert "'close' or 'drop'" in refused(ChannelServer, "overflow", value)


@pytest.mark.parametrize(
    "value",
    [
        "https://learn.example.com",
        b"https://learn.example.com",
        3,
        True,
        iter(["https://learn.example.com"]),  # not a collection: it would be used up
    ],
    ids=repr,
)
def test_origins_is_a_collection_never_a_string(value: object) -> None:
    assert "collection" in refused(ChannelServer, "origins", value)


@pytest.mark.parametrize(
    "origin",
    ["https://learn.example.com/", "learn.example.com", "null", "", 42, b"https://a.example"],
    ids=repr,
)
def test_each_origin_is_a_scheme_host_and_port(origin: object) -> None:
    with pytest.raises(UsageError) as error:
        ChannelServer(origins=[origin])  # type: ignore[list-item]
    assert str(error.value).startswith("origins: ") and shown(origin) in str(error.value)


@pytest.mark.parametrize(
    "value",
    ["chat", b"chat", 3, {"chat"}, frozenset({"chat"}), iter(["chat"]), {"chat": 1}],
    ids=repr,
)
def test_subprotocols_is_a_sequence_never_a_string_or_a_set(value: object) -> None:
    assert "sequence" in refused(ChannelServer, "subprotocols", value)


@pytest.mark.parametrize("name", ["a b", "", "chat,json", b"chat", None, 1], ids=repr)
def test_each_subprotocol_is_a_token(name: object) -> None:
    with pytest.raises(UsageError) as error:
        ChannelServer(subprotocols=[name])  # type: ignore[list-item]
    assert str(error.value).startswith("subprotocols: ") and shown(name) in str(error.value)


def test_a_bad_origin_or_subprotocol_is_refused_with_an_example_of_a_good_one() -> None:
    with pytest.raises(UsageError) as origin:
        ChannelServer(origins=["https://learn.example.com/"])
    assert str(origin.value) == (
        "origins: 'https://learn.example.com/' is not an origin like 'https://host:port' (no path)"
    )
    with pytest.raises(UsageError) as subprotocol:
        ChannelServer(subprotocols=["chat,json"])
    assert str(subprotocol.value) == "subprotocols: 'chat,json' is not a subprotocol name (a token)"


def test_good_collections_are_kept_in_their_checked_form() -> None:
    channel = ChannelServer(origins=["HTTPS://Learn.Example.com", None], subprotocols=["b", "a"])
    assert channel.subprotocols == ("b", "a")  # a tuple: later changes to the list don't leak


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("broker", object(), "broker is a Broker or None"),
        ("broker", "memory", "broker is a Broker or None"),
        ("clock", 5, "clock is a function"),
        ("monotonic_clock", "now", "monotonic_clock is a function"),
    ],
)
def test_the_chats_objects_are_checked_too(option: str, value: object, words: str) -> None:
    assert words in refused(ChatServer, option, value)


# -- options that bound each other ---------------------------------------------------------


def test_a_page_of_history_must_fit_in_the_output_bound() -> None:
    with pytest.raises(UsageError, match=r"history_page_bytes \(3000\) .* max_buffered_amount"):
        ChatServer(history_page_bytes=3000, max_buffered_amount=4000)


def test_the_init_segment_must_fit_in_the_output_bound() -> None:
    with pytest.raises(UsageError, match=r"max_init_size \(3000\) .* max_buffered_amount"):
        StreamServer(max_init_size=3000, max_buffered_amount=4000)


# -- names: misspelled, renamed ------------------------------------------------------------


def test_an_unknown_option_is_refused_with_the_name_it_probably_meant() -> None:
    with pytest.raises(UsageError) as error:
        ChannelServer(max_mesage_size=10)  # type: ignore[call-arg]
    assert str(error.value) == (
        "ChannelServer has no option 'max_mesage_size' (did you mean 'max_message_size'?)"
    )
    with pytest.raises(UsageError, match=r"has no option 'flavour'$"):
        ChannelServer(flavour="vanilla")  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # the router's keywords are its signature
        Router(max_mesage_size=10)  # type: ignore[call-arg]


RENAMED = [
    (ChatServer, "history_size", "replay_messages"),
    (ChatServer, "max_text_length", "max_text_bytes"),
    (ChatServer, "max_room_length", "max_room_name_bytes"),
    (ChatServer, "max_ref_length", "max_ref_bytes"),
    (StreamServer, "viewer_buffer", "viewer_buffer_bytes"),
]


@pytest.mark.parametrize(("make", "old", "new"), RENAMED)
def test_a_renamed_option_says_its_new_name(make: type[ChannelServer], old: str, new: str) -> None:
    with pytest.raises(UsageError, match=f"has no option '{old}' \\(renamed '{new}'\\)"):
        make(**{old: 10})  # type: ignore[misc]
    assert make.RENAMED[old] == new and new in make.OPTIONS


@pytest.mark.parametrize(("make", "old", "new"), RENAMED)
def test_a_renamed_option_set_as_a_class_attribute_is_not_silently_ignored(
    make: type[ChannelServer], old: str, new: str
) -> None:
    subclass: Any = type("Old", (make,), {old: 10})
    with pytest.raises(UsageError, match=f"Old.{old} is not an option \\(renamed '{new}'\\)"):
        subclass()


def test_every_numeric_option_is_an_option() -> None:
    """A number checked but not accepted as a keyword (or the reverse) would be a typo."""
    for channel in (ChannelServer, ChatServer, StreamServer):
        assert set(channel.NUMBERS) <= set(channel.OPTIONS), channel.__name__
        assert len(set(channel.OPTIONS)) == len(channel.OPTIONS), channel.__name__
