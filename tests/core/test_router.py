"""Router registration, lookup, plain HTTP routes; the hub's one connection per transport."""

from __future__ import annotations

import pytest

from spoc_sockets import ChannelServer, Hub, Reject, Request, Response, Router, UsageError
from spoc_sockets.testing import HandshakeRejected, TestClient

from ..frames import upgrade_request
from .wire import Echo, Peer, Recorder, parse_answer


def test_add_returns_the_instance_and_lists_it() -> None:
    router = Router()
    echo = Echo()
    assert router.add("/echo", echo) is echo
    room = Recorder()
    router.add("/rooms/{room}", room)
    assert router.channels == {"/echo": echo, "/rooms/{room}": room}


def test_channel_decorator_registers_an_instance_with_options() -> None:
    router = Router()

    @router.channel("/deco", max_message_size=10, ping_interval=None, overflow="drop")
    class Deco(ChannelServer):
        pass

    assert isinstance(Deco, type)  # the class itself is returned
    instance = router.channels["/deco"]
    assert type(instance) is Deco
    assert instance.max_message_size == 10
    assert instance.ping_interval is None
    assert instance.overflow == "drop"
    assert Deco.max_message_size == 2**20  # the class default is untouched


def test_unknown_option_and_bad_overflow_refused() -> None:
    router = Router()
    with pytest.raises(UsageError):
        router.channel("/x", max_mesage_size=1)(Echo)
    with pytest.raises(UsageError):
        Echo(overflow="block")
    assert router.channels == {}


def test_add_of_a_non_channel_server_refused() -> None:
    router = Router()
    with pytest.raises(UsageError):
        router.add("/echo", Echo)  # type: ignore[arg-type]  # the class, not an instance
    with pytest.raises(UsageError):
        router.add("/echo", object())  # type: ignore[type-var]
    assert router.channels == {}


def test_static_lookup_and_templates() -> None:
    router = Router()
    echo, stream, user = Echo(), Echo(), Echo()
    router.add("/echo", echo)
    router.add("/stream/{stream_id}", stream)
    router.add("/u/{a}/x/{b}", user)
    assert router.resolve("/echo") == ("/echo", echo, {})
    assert router.resolve("/stream/42") == ("/stream/{stream_id}", stream, {"stream_id": "42"})
    assert router.resolve("/u/1/x/2") == ("/u/{a}/x/{b}", user, {"a": "1", "b": "2"})
    assert router.resolve("/u/1/y/2") is None
    assert router.resolve("/stream/") is None  # an empty segment is not a value
    assert router.resolve("/stream/1/2") is None
    assert router.resolve("/nowhere") is None
    assert router.resolve("/stream/a%20b") == ("/stream/{stream_id}", stream, {"stream_id": "a b"})


def test_static_wins_over_a_template_in_either_order() -> None:
    for static_first in (True, False):
        router = Router()
        static, template = Echo(), Echo()
        if static_first:
            router.add("/stream/live", static)
            router.add("/stream/{id}", template)
        else:
            router.add("/stream/{id}", template)
            router.add("/stream/live", static)
        assert router.resolve("/stream/live") == ("/stream/live", static, {})
        assert router.resolve("/stream/other")[1:] == (template, {"id": "other"})  # type: ignore[index]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/a/{x}", "/a/{y}"),
        ("/a/{x}", "/{y}/b"),
        ("/{x}/{y}", "/a/{z}"),
    ],
)
def test_conflicting_templates_refused(first: str, second: str) -> None:
    router = Router()
    router.add(first, Echo())
    with pytest.raises(UsageError):
        router.add(second, Echo())
    assert list(router.channels) == [first]


def test_templates_that_cannot_overlap_are_both_accepted() -> None:
    router = Router()
    router.add("/a/{x}", Echo())
    router.add("/b/{x}", Echo())
    router.add("/a/{x}/more", Echo())
    assert len(router.channels) == 3


def test_duplicate_static_refused() -> None:
    router = Router()
    first = router.add("/echo", Echo())
    with pytest.raises(UsageError):
        router.add("/echo", Echo())
    assert router.channels == {"/echo": first}


@pytest.mark.parametrize(
    "path",
    ["/a/x{id}", "/a/{id}x", "/a/{id", "/a/id}", "/{a}/{a}", "/{1x}", "/{}", "echo", "", "{x}"],
)
def test_bad_templates_refused(path: str) -> None:
    router = Router()
    with pytest.raises(UsageError):
        router.add(path, Echo())
    assert router.channels == {}


def _get(router: Router, request: bytes) -> Peer:
    peer = Peer(router)
    peer.send(request)
    return peer


def test_http_route_serves_plain_get_while_upgrade_goes_to_channel() -> None:
    router = Router()
    recorder = router.add("/", Recorder())
    seen = []

    def page(request: object) -> Response:
        seen.append(request)
        return Response(201, "<h1>é</h1>", "text/html; charset=utf-8", (("X-Extra", "1"),))

    router.add_http("/", page)
    plain = _get(router, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = plain.answer
    assert answer.status == 201
    assert answer.header("Content-Type") == "text/html; charset=utf-8"
    assert answer.header("X-Extra") == "1"
    assert answer.body == "<h1>é</h1>".encode()
    assert answer.header("Content-Length") == str(len(answer.body))
    assert plain.server.should_close
    assert len(seen) == 1 and not recorder.connected

    upgraded = _get(router, upgrade_request("/"))
    assert upgraded.answer.status == 101
    assert len(recorder.connected) == 1 and len(seen) == 1
    assert router.upgraded == {upgraded.server.connection}


def test_http_route_without_channel_and_bytes_body() -> None:
    router = Router()
    router.add_http("/health", lambda request: Response(body=b"ok"))
    answer = _get(router, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").answer
    assert (answer.status, answer.body) == (200, b"ok")
    assert answer.header("Content-Type") == "text/plain; charset=utf-8"
    # an upgrade on a path with only an HTTP route finds no channel
    assert _get(router, upgrade_request("/health")).answer.status == 404
    with pytest.raises(UsageError):
        router.add_http("/health", lambda request: Response())


def test_http_handler_that_raises_gives_500_without_the_text() -> None:
    router = Router()

    def broken(request: object) -> Response:
        raise RuntimeError("secret-internal")

    router.add_http("/b", broken)
    answer = _get(router, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").answer
    assert answer.status == 500
    assert b"secret" not in answer.body


def test_the_same_transport_cannot_be_opened_twice_while_alive() -> None:
    router = Router()
    router.add("/echo", Echo())
    hub = Hub(router)
    transport = object()
    first = Peer(router, hub=hub, transport=transport)
    first.handshake()
    with pytest.raises(UsageError):
        hub.open(0.0, transport=transport)
    assert hub.connections == [first.server]
    other = hub.open(0.0, transport=object())  # another transport is fine
    first.send(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")  # close 1000
    assert first.server.should_close
    again = hub.open(0.0, transport=transport)  # allowed once the first finished
    assert set(hub.connections) == {other, again}


def test_a_refused_transport_is_released_too() -> None:
    router = Router()
    hub = Hub(router)
    transport = ("10.0.0.1", 1234)
    peer = Peer(router, hub=hub, transport=transport)
    peer.send(upgrade_request("/nowhere"))
    assert peer.answer.status == 404
    hub.open(1.0, transport=transport)


def test_each_server_claims_its_own_transports_on_a_shared_router() -> None:
    router = Router()
    router.add("/echo", Echo())
    transport = ("10.0.0.1", 1234)
    first, second = Hub(router), Hub(router)
    a = Peer(router, hub=first, transport=transport)
    b = Peer(router, hub=second, transport=transport)  # another server's transport
    a.handshake()
    b.handshake()
    assert router.upgraded == {a.server.connection, b.server.connection}
    with pytest.raises(UsageError):
        first.open(0.0, transport=transport)


def test_upgraded_set_follows_connections() -> None:
    router = Router()
    router.add("/echo", Echo())
    with TestClient(router) as client:
        a = client.connect("/echo")
        b = client.connect("/echo")
        assert router.upgraded == {a.server.connection, b.server.connection}
        a.close()
        assert router.upgraded == {b.server.connection}
        b.abort()
        assert router.upgraded == frozenset()


class Chat(ChannelServer):
    pass


class Room(Chat):
    pass


def test_get_finds_the_one_instance_of_exactly_that_class() -> None:
    router = Router()
    chat, room = router.add("/chat", Chat()), router.add("/room", Room())
    router.add("/echo", Echo())
    router.add("/also/chat", chat)  # one instance at two paths is still one
    assert router.get(Chat) is chat  # a subclass's instance is not a Chat here
    assert router.get(Room) is room
    assert router.get(Chat, "/also/chat") is chat


def test_get_with_a_path_picks_among_several() -> None:
    router = Router()
    first, second = router.add("/a", Chat()), router.add("/b", Chat())
    assert router.get(Chat, "/a") is first
    assert router.get(Chat, "/b") is second


@pytest.mark.parametrize(
    ("registered", "path", "message"),
    [
        ((), None, "one Chat is asked for, and none is registered"),
        (("/b",), "/a", "one Chat at '/a' is asked for, and none is registered"),
        (("/a", "/b"), None, "one Chat is asked for, and several are: give the path"),
    ],
)
def test_get_says_what_is_missing_or_ambiguous(
    registered: tuple[str, ...], path: str | None, message: str
) -> None:
    router = Router()
    router.add("/room", Room())
    for where in registered:
        router.add(where, Chat())
    with pytest.raises(UsageError) as refused:
        router.get(Chat, path)
    assert str(refused.value) == message


class Picky(Recorder):
    def authenticate(self, request: Request) -> object:
        if "no" in request.query:
            raise Reject(403, "no")
        return None


def test_stats_count_each_routes_open_connections_and_refusals() -> None:
    router = Router()
    router.add("/a", Picky())
    router.add("/rooms/{room}", Picky())
    with TestClient(router) as client:
        a, b = client.connect("/a"), client.connect("/a")
        room = client.connect("/rooms/x")
        for path in ("/a?no", "/a?no", "/rooms/y?no", "/nowhere"):
            with pytest.raises(HandshakeRejected):
                client.connect(path)
        a.send("hello")
        client.pump()
        stats = router.stats()
        assert (stats["/a"].connections, stats["/a"].accepted, stats["/a"].refused) == (
            2,
            2,
            {403: 2},
        )
        assert (stats["/rooms/{room}"].connections, stats["/rooms/{room}"].refused) == (
            1,
            {403: 1},
        )
        assert stats.unrouted_refused == {404: 1}
        a.close()
        after = router.stats()["/a"]  # a's traffic is kept once it has ended
        assert (after.connections, after.closed, after.messages_in, after.bytes_in) == (
            1,
            {1000: 1},
            1,
            5,
        )
        b.close(4000)
        room.close()
        assert router.stats()["/a"].connections == 0
        assert router.stats()["/a"].closed == {1000: 1, 4000: 1}


def _handshake(hub: Hub, address: str, now: float) -> bytes:
    server = hub.open(now, peer=(address, 40000))
    server.receive_data(upgrade_request("/r"), now)
    return server.data_to_send(now)


def test_new_addresses_are_admitted_while_old_rate_windows_are_forgotten() -> None:
    router = Router(max_handshake_rate=0.1)  # 1 per 10-second window and address
    router.add("/r", Recorder())
    hub = Hub(router)
    for n in range(2500):  # past the sizes at which the table of windows is pruned
        address = f"10.1.{n // 250}.{n % 250}"
        assert parse_answer(_handshake(hub, address, n * 0.01))[0].status == 101


def test_the_429_of_the_handshake_rate_writes_retry_after_in_its_usual_case() -> None:
    router = Router(max_handshake_rate=0.1)
    router.add("/r", Recorder())
    hub = Hub(router)
    _handshake(hub, "10.0.0.1", 0.0)
    assert b"\r\nRetry-After: 10\r\n" in _handshake(hub, "10.0.0.1", 0.0)


def test_a_percent_encoded_static_path_is_routed_by_its_decoding() -> None:
    router = Router()
    cafe, echo = router.add("/rooms/café", Echo()), router.add("/echo", Echo())
    assert router.resolve("/rooms/caf%C3%A9") == ("/rooms/café", cafe, {})
    assert router.resolve("/ech%6F") == ("/echo", echo, {})


def test_an_encoded_slash_never_splits_a_static_path() -> None:
    router = Router()
    static = router.add("/a/b", Echo())
    assert router.resolve("/a/b") == ("/a/b", static, {})
    assert router.resolve("/a%2Fb") is None


def test_one_connection_per_address_admits_the_first_of_each_address() -> None:
    router = Router(max_connections_per_address=1)
    router.add("/r", Recorder())
    hub = Hub(router)
    assert parse_answer(_handshake(hub, "10.0.0.1", 0.0))[0].status == 101
    assert parse_answer(_handshake(hub, "10.0.0.2", 0.0))[0].status == 101
    assert parse_answer(_handshake(hub, "10.0.0.1", 0.0))[0].status == 429


def test_the_503_of_a_full_channel_writes_retry_after_in_its_usual_case() -> None:
    router = Router()
    router.add("/r", Recorder(max_connections=1))
    hub = Hub(router)
    _handshake(hub, "10.0.0.1", 0.0)
    assert b"\r\nRetry-After: 10\r\n" in _handshake(hub, "10.0.0.2", 0.0)


def test_a_full_channel_takes_a_new_connection_once_one_has_ended() -> None:
    router = Router()
    router.add("/r", Recorder(max_connections=1))
    with TestClient(router) as client:
        client.connect("/r").close()
        with client.connect("/r") as again:
            assert again.open
