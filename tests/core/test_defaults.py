"""Every documented default, read from the docs and asserted value by value against the
code: the "Default limits" table of docs/answers.rst (Router and ChannelServer) and the
signatures of docs/serving-*.rst (the adapters' keyword defaults). A default changed on
one side only fails here, naming the option."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Collection
from pathlib import Path
from types import ModuleType

import pytest

import spoc_sockets
from spoc_sockets import ChannelServer, Router

DOCS = Path(__file__).resolve().parents[2] / "docs"

# -- the "Default limits" table ----------------------------------------------------------------

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
    """The body rows of the first reStructuredText simple table after ``title``, as cells."""
    lines = text.split(f"\n{title}\n", 1)[1].splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    top, header_end, bottom = borders[:3]
    spans = [m.span() for m in re.finditer(r"=+", lines[top])]
    rows = []
    for line in lines[header_end + 1 : bottom]:
        ends = [end for _, end in spans[:-1]] + [len(line)]  # the last column may overflow
        rows.append([line[start:end].strip() for (start, _), end in zip(spans, ends, strict=True)])
    return rows


def documented_limits() -> dict[str, str]:
    """``{"Router.max_request_size": "16 KiB", ...}`` from docs/answers.rst."""
    rows = simple_table((DOCS / "answers.rst").read_text(), "Default limits")
    limits = {}
    for option, default, *_ in rows:
        match = re.fullmatch(r"``(\w+\.\w+)``", option)
        assert match, f"docs/answers.rst: a default-limits row names no option: {option!r}"
        limits[match[1]] = default
    return limits


def agrees(documented: str, value: object) -> bool:
    """Whether the code's ``value`` is what the table's cell ``documented`` says."""
    literal = re.fullmatch(r"``(.*)``", documented)
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
    assert quantity and quantity[2] in UNITS, f"docs/answers.rst: cannot read {documented!r}"
    unit = UNITS[quantity[2]]
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == float(quantity[1]) * unit
    )


def code_default(qualified: str) -> object:
    """The default the code gives an option: the attribute of a default-built instance
    (and the constructor's default, which must say the same)."""
    owner, option = qualified.split(".")
    cls = getattr(spoc_sockets, owner)
    value = getattr(cls(), option)
    parameter = inspect.signature(cls).parameters.get(option)
    if parameter is not None and parameter.default is not inspect.Parameter.empty:
        assert parameter.default == value, f"{qualified}: the constructor's default differs"
    return value


LIMITS = documented_limits()


@pytest.mark.parametrize("option", sorted(LIMITS))
def test_a_documented_default_is_the_code_default(option: str) -> None:
    value = code_default(option)
    assert agrees(LIMITS[option], value), f"{option}: docs say {LIMITS[option]!r}, code {value!r}"


def test_every_option_is_in_the_table() -> None:
    router_options = [
        name
        for name, parameter in inspect.signature(Router).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    ]
    expected = {f"Router.{name}" for name in router_options}
    expected |= {f"ChannelServer.{name}" for name in ChannelServer.OPTIONS}
    assert expected <= set(LIMITS), f"not in the docs' table: {sorted(expected - set(LIMITS))}"


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


# -- the adapters' keyword defaults ------------------------------------------------------------

ADAPTERS = ["asyncio", "threads", "trio"]


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
