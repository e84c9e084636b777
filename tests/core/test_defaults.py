"""Every documented default, read from the docs and asserted value by value against the
code: the tables of docs/options.rst (the one reference: Router, ChannelServer, the
built-in channels, the adapters' keywords) and the signatures of docs/serving-*.rst. A
default changed on one side only fails here, naming the option; so does an option
missing from the reference, or a unit that contradicts the option's name."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Collection
from pathlib import Path
from types import ModuleType

import pytest

from spoc_sockets import ChannelServer, Router
from spoc_sockets.channels.brokers.redis import RedisBroker
from spoc_sockets.channels.chat import ChatServer
from spoc_sockets.channels.stream import StreamServer

DOCS = Path(__file__).resolve().parents[2] / "docs"
OPTIONS_PAGE = (DOCS / "options.rst").read_text()

# -- the reference tables ----------------------------------------------------------------------

UNITS = {
    "": 1,
    "B": 1,
    "bytes": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "ms": 0.001,
    "s": 1,
    "per second": 1,
}


def simple_table(text: str, title: str) -> list[list[str]]:
    """The body rows of the first reStructuredText simple table after the section
    ``title``, as cells (a row's continuation lines are joined to it)."""
    lines = text.split(f"\n{title}\n", 1)[1].splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    top, header_end, bottom = borders[:3]
    spans = [m.span() for m in re.finditer(r"=+", lines[top])]
    rows: list[list[str]] = []
    for line in lines[header_end + 1 : bottom]:
        ends = [end for _, end in spans[:-1]] + [len(line)]  # the last column may overflow
        cells = [line[start:end].strip() for (start, _), end in zip(spans, ends, strict=True)]
        if cells[0] or not rows:
            rows.append(cells)
        else:  # a continuation line
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
    return rows


def reference(title: str) -> dict[str, list[str]]:
    """``{option: [unit, default, ...]}`` from the table of one section of options.rst."""
    table = {}
    for option, *cells in simple_table(OPTIONS_PAGE, title):
        match = re.fullmatch(r"``(\w+)``", option)
        assert match, f"docs/options.rst, {title}: a row names no option: {option!r}"
        assert match[1] not in table, f"docs/options.rst, {title}: {match[1]} twice"
        table[match[1]] = cells
    return table


def agrees(documented: str, value: object) -> bool:
    """Whether the code's ``value`` is what the table's cell ``documented`` says."""
    literal = re.fullmatch(r"``(.*)``", documented)
    if literal and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", literal[1]):  # a function's name
        module, name = literal[1].rsplit(".", 1)
        return value is getattr(importlib.import_module(module), name)
    if literal:
        expected = ast.literal_eval(literal[1])
        return type(value) is type(expected) and value == expected
    if documented == "off" or documented == "on":
        return value is (documented == "on")
    if documented == "any":
        return value is None
    if documented == "none":
        return value is None or (
            isinstance(value, Collection) and not isinstance(value, str) and len(value) == 0
        )
    quantity = re.fullmatch(r"(\d+(?:\.\d+)?) ?(.*)", documented)
    assert quantity and quantity[2] in UNITS, f"docs/options.rst: cannot read {documented!r}"
    unit = UNITS[quantity[2]]
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == float(quantity[1]) * unit
    )


CHANNELS: list[type[ChannelServer]] = [ChannelServer, ChatServer, StreamServer]
TABLES = {"Router": reference("Router")} | {c.__name__: reference(c.__name__) for c in CHANNELS}


def code_default(owner: str, option: str) -> object:
    """The default the code gives an option: the router's attribute once built (and its
    constructor's default, which must say the same), or the channel's class attribute."""
    if owner == "Router":
        value = getattr(Router(), option)
        parameter = inspect.signature(Router).parameters[option]
        assert parameter.default == value, f"Router.{option}: the constructor's default differs"
        return value
    return getattr({c.__name__: c for c in CHANNELS}[owner], option)


ROWS = [(owner, option) for owner, table in TABLES.items() for option in table]


@pytest.mark.parametrize(("owner", "option"), ROWS)
def test_a_documented_default_is_the_code_default(owner: str, option: str) -> None:
    _unit, default, *_ = TABLES[owner][option]
    value = code_default(owner, option)
    assert agrees(default, value), f"{owner}.{option}: docs say {default!r}, code {value!r}"


def test_the_redis_brokers_documented_defaults_are_the_code() -> None:
    table = reference("RedisBroker")
    parameters = inspect.signature(RedisBroker).parameters
    options = {name: p.default for name, p in parameters.items() if name != "url"}
    assert sorted(table) == sorted(options)
    for option, default in options.items():
        documented = table[option][1]
        assert agrees(documented, default), f"RedisBroker.{option}: docs say {documented!r}"
    assert sorted(RedisBroker.NUMBERS) == sorted(set(options) - {"prefix"})


def test_every_option_is_in_the_reference() -> None:
    router = [
        name
        for name, parameter in inspect.signature(Router).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    ]
    assert sorted(router) == sorted(TABLES["Router"]), "the Router table is not its options"
    assert sorted(ChannelServer.OPTIONS) == sorted(TABLES["ChannelServer"])
    for channel in (ChatServer, StreamServer):
        own = {  # its own options, and the channel options it gives a default of its own
            name
            for name in channel.OPTIONS
            if name not in ChannelServer.OPTIONS or name in vars(channel)
        }
        assert sorted(own) == sorted(TABLES[channel.__name__]), channel.__name__


#: what an option's name says its unit is (docs/options.rst: "Names carry their unit")
NAMED_UNITS = {"_size": "bytes", "_bytes": "bytes", "_timeout": "seconds", "_interval": "seconds"}


@pytest.mark.parametrize(("owner", "option"), ROWS)
def test_a_unit_is_documented_and_is_what_the_name_says(owner: str, option: str) -> None:
    unit = TABLES[owner][option][0]
    assert unit, f"{owner}.{option} has no unit in docs/options.rst"
    for suffix, named in NAMED_UNITS.items():
        if option.endswith(suffix):
            assert unit == named, f"{owner}.{option} is named in {named}, documented in {unit}"
    if option == "rate" or option.endswith("_rate"):
        assert unit == "per second", f"{owner}.{option}"


def test_the_table_reader_reads_what_the_table_says() -> None:
    """The reader itself: units, words and literals, and a mismatch it must see."""
    assert agrees("16 KiB", 16384) and not agrees("16 KiB", 16000)
    assert agrees("20 s", 20.0) and not agrees("20 s", 21.0)
    assert agrees("10 per second", 10) and agrees("1024", 1024) and not agrees("1024", 1000)
    assert agrees("1 MiB", 2**20) and not agrees("1 MiB", True)
    assert agrees('``"close"``', "close") and not agrees('``"close"``', "drop")
    assert agrees("off", False) and not agrees("off", 0) and not agrees("on", False)
    assert agrees("any", None) and not agrees("any", ())
    assert agrees("none", ()) and not agrees("none", ("chat",))
    assert agrees("``time.time``", __import__("time").time)
    assert not agrees("``time.time``", __import__("time").monotonic)
    rows = simple_table("\nT\n=  =\na  b\n=  =\nx  one\n   two\ny  3\n=  =\n", "T")
    assert rows == [["x", "one two"], ["y", "3"]]


# -- the adapters' keywords in the reference ---------------------------------------------------

ADAPTERS = ["asyncio", "threads", "trio"]
ADAPTER_TABLE = simple_table(OPTIONS_PAGE, "Adapters")
COLUMNS = {"asyncio": 2, "trio": 3, "threads": 4}  # Keyword, Unit, asyncio, trio, threads


def keyword_defaults(adapter: str) -> dict[str, object]:
    serve = importlib.import_module(f"spoc_sockets.{adapter}").serve
    return {
        name: parameter.default
        for name, parameter in inspect.signature(serve).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "task_status"
    }


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_reference_gives_each_adapters_keyword_defaults(adapter: str) -> None:
    code = keyword_defaults(adapter)
    documented = {}
    for cells in ADAPTER_TABLE:
        if cells[COLUMNS[adapter]] != "—":  # the adapter has no such keyword
            documented[cells[0].strip("`")] = cells[COLUMNS[adapter]]
    assert sorted(documented) == sorted(code), f"docs/options.rst, Adapters, {adapter}"
    for name, cell in documented.items():
        assert agrees(cell, code[name]), f"{adapter}.serve {name}: docs {cell!r}, {code[name]!r}"


# -- the adapters' signatures on the serving pages ---------------------------------------------


def documented_signatures(page: str) -> list[tuple[str, str, dict[str, str]]]:
    """``(name, parameters, {option: default})`` for each signature paragraph of a
    serving page (a line starting with ````name(...=...)````), with the option list
    under it (````option`` (default ``value``)``)."""
    text = (DOCS / page).read_text()
    found = []
    pattern = re.compile(r"^``(\w+)\(([^`]*=[^`]*)\)``", re.MULTILINE)
    matches = list(pattern.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        options = re.findall(r"^``(\w+)`` \(default ``([^`]*)``", text[match.end() : end], re.M)
        listed = dict(options)
        found.append((match[1], " ".join(match[2].split()), listed))
    return found


def documented_parameters(
    module: ModuleType, name: str, parameters: str
) -> tuple[list[str], dict[str, object]]:
    """The names and defaults of a documented signature, the defaults evaluated in the
    adapter module's names (so ``trio.TASK_STATUS_IGNORED`` means what it means there)."""
    function = ast.parse(f"def {name}({parameters}): pass").body[0]
    assert isinstance(function, ast.FunctionDef)
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    names = [argument.arg for argument in positional + arguments.kwonlyargs]
    pairs = list(zip(reversed(positional), reversed(arguments.defaults), strict=False))
    keywords = zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
    pairs += [(argument, default) for argument, default in keywords if default is not None]
    defaults = {
        argument.arg: eval(ast.unparse(default), vars(module)) for argument, default in pairs
    }
    return names, defaults


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_adapters_documented_signatures_are_the_code(adapter: str) -> None:
    module = importlib.import_module(f"spoc_sockets.{adapter}")
    signatures = documented_signatures(f"serving-{adapter}.rst")
    assert "serve" in [name for name, _, _ in signatures], f"serving-{adapter}.rst: no serve(...)"
    for name, parameters, listed in signatures:
        where = f"serving-{adapter}.rst, {name}()"
        signature = inspect.signature(getattr(module, name))
        code = {
            key: p.default
            for key, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        names, documented = documented_parameters(module, name, parameters)
        assert names == list(signature.parameters), where
        assert documented == code, where
        for option, text in listed.items():  # the option list under the signature
            value = ast.literal_eval(text)
            assert option in code, f"{where}: {option} has no default in the code"
            assert type(value) is type(code[option]) and value == code[option], (
                f"{where}: {option} is {code[option]!r} in the code, {text} in the docs"
            )
