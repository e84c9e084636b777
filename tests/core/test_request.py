"""Request, Headers, Query: what a channel's hooks see of the upgrade request."""

from __future__ import annotations

import pytest

from spoc_sockets import ChannelServer, Connection, Headers, Query, Request, Router
from spoc_sockets.testing import TestClient


def test_headers_are_case_insensitive_and_keep_repeats() -> None:
    headers = Headers([("X-Thing", "a"), ("x-thing", "b"), ("Host", "h")])
    assert headers["x-thing"] == "a" and headers["X-THING"] == "a"
    assert headers.get("X-Thing") == "a"
    assert headers.get_all("X-THING") == ["a", "b"]
    assert headers.get_all("missing") == []
    assert headers.get("missing") is None
    assert "HOST" in headers and "host" in headers and "nope" not in headers
    assert 42 not in headers  # type: ignore[comparison-overlap]
    assert list(headers) == ["x-thing", "host"]
    assert len(headers) == 2
    assert headers.raw_items() == (("X-Thing", "a"), ("x-thing", "b"), ("Host", "h"))
    with pytest.raises(KeyError):
        headers["nope"]
    assert "X-Thing" in repr(headers)


def test_header_tokens_split_strip_lowercase_over_every_value() -> None:
    headers = Headers([("Connection", "keep-alive, Upgrade"), ("connection", " ,TE ,")])
    assert headers.tokens("CONNECTION") == ["keep-alive", "upgrade", "te"]
    assert headers.tokens("absent") == []


def test_query_keeps_repeats_and_blank_values_and_is_case_sensitive() -> None:
    request = Request.parse("GET", "/p?a=1&a=2&empty=&flag&B=x&sp=a%20b+c", [])
    query = request.query
    assert isinstance(query, Query)
    assert query["a"] == "1" and query.get_all("a") == ["1", "2"]
    assert query["empty"] == "" and query["flag"] == ""
    assert "b" not in query and query["B"] == "x"
    assert query["sp"] == "a b c"
    assert list(query) == ["a", "empty", "flag", "B", "sp"]


def test_parse_percent_decodes_path_and_keeps_raw_target() -> None:
    request = Request.parse("GET", "/caf%C3%A9/a%20b?x=%2F", [("Host", "h")], ("1.2.3.4", 5))
    assert request.path == "/café/a b"
    assert request.target == "/caf%C3%A9/a%20b?x=%2F"
    assert request.query["x"] == "/"
    assert request.peer == ("1.2.3.4", 5)
    assert request.method == "GET"
    assert dict(request.path_params) == {}


def test_cookies() -> None:
    request = Request.parse(
        "GET",
        "/",
        [
            ("Cookie", 'a=1; b="quoted"; c=x%20y; novalue; =anon'),
            ("cookie", "a=second; d=4"),
        ],
    )
    assert request.cookies == {"a": "1", "b": "quoted", "c": "x y", "d": "4"}
    assert Request.parse("GET", "/", []).cookies == {}


def test_origin() -> None:
    assert (
        Request.parse("GET", "/", [("ORIGIN", "https://a.example")]).origin == "https://a.example"
    )
    assert Request.parse("GET", "/", []).origin is None


def test_subprotocols_in_client_order_across_headers() -> None:
    request = Request.parse(
        "GET",
        "/",
        [("Sec-WebSocket-Protocol", "chat.v2, chat.v1"), ("sec-websocket-protocol", " ,mqtt")],
    )
    assert request.subprotocols == ("chat.v2", "chat.v1", "mqtt")
    assert Request.parse("GET", "/", []).subprotocols == ()


def _seen(router: Router, path: str, **kwargs: object) -> Request:
    seen: list[Request] = []

    class Spy(ChannelServer):
        def authenticate(self, request: Request) -> object:
            seen.append(request)
            return None

        def on_connect(self, conn: Connection) -> None:
            assert conn.request is seen[-1]

    for channel_path in ("/static", "/rooms/{room}/users/{user}", "/files/{name}"):
        router.add(channel_path, Spy())
    with TestClient(router) as client, client.connect(path, **kwargs):  # type: ignore[arg-type]
        pass
    return seen[-1]


def test_path_params_reach_the_request_percent_decoded() -> None:
    request = _seen(Router(), "/rooms/caf%C3%A9/users/a%2Fb?x=1")
    assert dict(request.path_params) == {"room": "café", "user": "a/b"}
    assert request.path == "/rooms/café/users/a/b"
    assert request.query["x"] == "1"


def test_request_seen_by_hooks_carries_headers_cookies_origin_peer() -> None:
    request = _seen(
        Router(),
        "/static?token=t&token=u",
        headers=[("Origin", "https://o.example"), ("Cookie", "sid=42"), ("X-A", "1")],
        subprotocols=["p1", "p2"],
    )
    assert request.origin == "https://o.example"
    assert request.cookies == {"sid": "42"}
    assert request.headers["x-a"] == "1"
    assert request.query.get_all("token") == ["t", "u"]
    assert request.subprotocols == ("p1", "p2")
    assert request.peer == ("127.0.0.1", 50000)
    assert request.method == "GET"
    assert dict(request.path_params) == {}


def test_percent_encoded_static_path_routes() -> None:
    request = _seen(Router(), "/st%61tic")
    assert request.path == "/static"
    assert request.target == "/st%61tic"


def test_the_query_is_parsed_on_first_use_only() -> None:
    request = Request.parse("GET", "/p?" + "&".join(["a=1"] * 5000), [])
    assert request.query._index is None  # a channel that never reads it pays nothing
    assert len(request.query.get_all("a")) == 5000
    assert Query([("k", "v")])["k"] == "v" and Query("k=v&k=w").get_all("k") == ["v", "w"]
    assert repr(Query("x=1")) == "Query([('x', '1')])"
