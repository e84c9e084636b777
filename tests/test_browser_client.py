"""The browser client (``spoc_sockets/demo/static/spoc-client.js``) in a real headless Chromium.

The clients run in the page, against real channels served over 127.0.0.1 by the asyncio
adapter; the server's side of a connection is dropped (its transport aborted, no closing
handshake) to make them reconnect. The browser, the server thread and the wait helper
are those of ``test_browser`` (the demo page's own test).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import expect as pw_expect

import spoc_sockets
from spoc_sockets import ChannelServer, Connection, Request, Response, Router, ServerConnection
from spoc_sockets.channels.chat import ChatServer
from tests.test_browser import (  # the same browser and server helpers as the demo's test
    TIMEOUT_MS,
    DemoServer,
    browser,  # noqa: F401  (a fixture)
    join,
    pages,  # noqa: F401  (a fixture)
    server,  # noqa: F401  (a fixture)
    user,
    video_time,
    wait_for,
)

STATIC = Path(spoc_sockets.__file__).parent / "demo" / "static"
PAGE = "<!doctype html><meta charset=utf-8><title>client</title><body></body>"
PAGE_BYTES = 1024  # history in one reply on /chat: a resume of 30 messages takes pages
REPLAYED = 3  # messages a join without `since` replays on /chat
KEPT = 5  # messages a room keeps on /chat-short


class Garbage(ChannelServer):
    """Greets every client with text that is not a protocol event, then a real one."""

    def on_connect(self, conn: Connection) -> None:
        conn.send("not json")
        conn.send("[1, 2]")
        conn.send('{"no": "type"}')
        conn.send(b"\x00binary")
        conn.send('{"type": "welcome", "user": "x"}')


def client_router() -> Router:
    """Chats for named test users (``?user=``, loopback only), unthrottled, with small
    history pages (``/chat``) or a short history (``/chat-short``), and a blank page."""
    router = Router()
    unthrottled: dict[str, Any] = {"trust_user_param": True, "rate": 1000.0, "burst": 1000.0}
    chat = ChatServer(history_page_bytes=PAGE_BYTES, replay_messages=REPLAYED, **unthrottled)
    router.add("/chat", chat)
    router.add("/chat-short", ChatServer(max_history_messages=KEPT, **unthrottled))
    router.add("/chat-slow", ChatServer(trust_user_param=True, rate=2.0, burst=2.0))
    router.add("/garbage", Garbage())

    def page(request: Request) -> Response:
        return Response(200, PAGE, "text/html; charset=utf-8")

    router.add_http("/", page)
    return router


@pytest.fixture
def chat_server() -> Iterator[DemoServer]:
    """A fresh server for each test: no room remembers another test's messages."""
    served = DemoServer(client_router())
    served.start()
    try:
        yield served
    finally:
        served.stop()


# In the page: makeChat(name, path) connects a ChatClient as ?user=<name> that records
# every event; a gate held closed keeps it from reconnecting until the test opens it.
HARNESS = """
async () => {
  const m = await import("/spoc-client.js");
  window.m = m;
  window.clients = {};
  window.makeChat = (name, path = "/chat", options = {}) => {
    const gate = { open: true, waiters: [] };
    const log = { messages: [], events: [] };
    const client = new m.ChatClient(async () => {
      while (!gate.open) await new Promise((resolve) => gate.waiters.push(resolve));
      return `${path}?user=${name}`;
    }, { initialDelayMs: 50, maxDelayMs: 200, ...options });
    for (const type of ["open", "close", "welcome", "joined", "synced", "gap", "presence",
                        "members", "left", "notification", "error"]) {
      client.addEventListener(type, (e) => log.events.push([type, e.detail]));
    }
    client.addEventListener("message", (e) =>
      log.messages.push({ id: e.detail.message.id, text: e.detail.message.text,
                          user: e.detail.message.user, replay: e.detail.replay }));
    window.clients[name] = { client, gate, log };
    client.join("lobby");
    client.connect();
  };
  window.setGate = (name, open) => {
    const gate = window.clients[name].gate;
    gate.open = open;
    if (open) for (const wake of gate.waiters.splice(0)) wake();
  };
  window.members = (name) => {
    const room = window.clients[name].client.rooms.get("lobby");
    return room ? [...room.members].sort() : null;
  };
  window.events = (name, type) =>
    window.clients[name].log.events.filter(([t]) => t === type).map(([, d]) => d);
}
"""


@pytest.fixture
def page(browser: Browser, chat_server: DemoServer) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context()
    errors: list[str] = []
    try:
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(chat_server.url)
        tab.evaluate(HARNESS)
        yield tab
        assert errors == [], f"JavaScript errors on the page: {errors}"
    finally:
        context.close()


def events(page: Page, name: str, kind: str) -> list[Any]:
    return page.evaluate("([n, k]) => window.events(n, k)", [name, kind])  # type: ignore[no-any-return]


def messages(page: Page, name: str) -> list[dict[str, Any]]:
    return page.evaluate("(n) => window.clients[n].log.messages", name)  # type: ignore[no-any-return]


def members(page: Page, name: str) -> list[str] | None:
    return page.evaluate("(n) => window.members(n)", name)  # type: ignore[no-any-return]


def make_chat(page: Page, name: str, path: str = "/chat") -> None:
    page.evaluate("([n, p]) => window.makeChat(n, p)", [name, path])
    wait_for(page, lambda: events(page, name, "synced"), f"{name} to join")


def post(page: Page, name: str, text: str) -> None:
    ref = page.evaluate("([n, t]) => window.clients[n].client.post('lobby', t)", [name, text])
    assert isinstance(ref, str) and ref.startswith("c-")


def drop(served: DemoServer, name: str) -> None:
    """Aborts the server's side of ``name``'s connection."""
    assert served.drop(lambda conn: conn.connection.user == name) == 1  # type: ignore[union-attr]


def test_resume_after_the_server_drops_the_connection(page: Page, chat_server: DemoServer) -> None:
    """Messages posted while a client was cut off come back through `since` and paged
    history, once each and in order, and the user stays the same."""
    make_chat(page, "alice")
    make_chat(page, "bob")
    post(page, "alice", "before the cut")
    wait_for(page, lambda: len(messages(page, "bob")) == 1, "bob to get the first message")

    page.evaluate("window.setGate('bob', false)")
    drop(chat_server, "bob")
    close = wait_for(page, lambda: events(page, "bob", "close"), "bob to see the cut")[0]
    assert close["code"] == 1006 and close["retryInMs"] is not None
    wait_for(page, lambda: members(page, "alice") == ["alice"], "alice to see bob leave")

    missed = [f"missed {i:02} " + "x" * 60 for i in range(30)]
    for text in missed:
        post(page, "alice", text)
    wait_for(page, lambda: len(messages(page, "alice")) == 31, "alice's own messages")
    assert sum(len(t) for t in missed) > 2 * PAGE_BYTES  # the resume needs several pages

    page.evaluate("window.setGate('bob', true)")
    live = [f"live {i}" for i in range(5)]  # posted while bob resumes: live or in history
    for text in live:
        post(page, "alice", text)
    wait_for(page, lambda: len(messages(page, "bob")) >= 36, "bob to catch up", timeout=30)
    page.wait_for_timeout(300)  # a duplicate would arrive now

    got = messages(page, "bob")
    assert [m["text"] for m in got] == ["before the cut", *missed, *live]
    assert [m["id"] for m in got] == list(range(got[0]["id"], got[0]["id"] + 36))
    assert all(m["replay"] for m in got[1:31])  # the missed ones came from the history
    joined = events(page, "bob", "joined")
    assert [j["resumed"] for j in joined] == [False, True]
    assert events(page, "bob", "welcome") == [{"user": "bob"}] * 2
    assert events(page, "bob", "gap") == []
    wait_for(page, lambda: members(page, "bob") == ["alice", "bob"], "bob's members")
    wait_for(page, lambda: members(page, "alice") == ["alice", "bob"], "alice's members")


def test_a_client_that_saw_an_empty_room_resumes_from_its_start(
    page: Page, chat_server: DemoServer
) -> None:
    """Cut off before any message was posted, a client still gets every message posted
    meanwhile (more than a join without `since` replays)."""
    make_chat(page, "yan")
    make_chat(page, "zoe")
    page.evaluate("window.setGate('zoe', false)")
    drop(chat_server, "zoe")
    wait_for(page, lambda: members(page, "yan") == ["yan"], "yan to see zoe leave")
    for i in range(2 * REPLAYED):
        post(page, "yan", f"m{i}")
    wait_for(page, lambda: len(messages(page, "yan")) == 2 * REPLAYED, "yan's own messages")
    page.evaluate("window.setGate('zoe', true)")
    wait_for(page, lambda: len(events(page, "zoe", "synced")) == 2, "zoe to resume")
    assert [m["text"] for m in messages(page, "zoe")] == [f"m{i}" for i in range(2 * REPLAYED)]
    assert [j["resumed"] for j in events(page, "zoe", "joined")] == [False, True]
    assert events(page, "zoe", "gap") == []


def test_a_resume_past_what_the_room_kept_reports_a_gap(
    page: Page, chat_server: DemoServer
) -> None:
    make_chat(page, "carol", "/chat-short")
    make_chat(page, "dave", "/chat-short")
    post(page, "carol", "first")  # the last message dave sees: his resume's `since`
    wait_for(page, lambda: messages(page, "dave"), "dave to see the first message")
    page.evaluate("window.setGate('dave', false)")
    drop(chat_server, "dave")
    wait_for(page, lambda: events(page, "dave", "close"), "dave to see the cut")
    wait_for(page, lambda: members(page, "carol") == ["carol"], "carol to see dave leave")
    for i in range(12):
        post(page, "carol", f"m{i}")
    wait_for(page, lambda: len(messages(page, "carol")) == 13, "carol's own messages")
    page.evaluate("window.setGate('dave', true)")
    wait_for(page, lambda: events(page, "dave", "gap"), "dave to learn of the gap")
    wait_for(page, lambda: len(events(page, "dave", "synced")) == 2, "dave to resume")
    kept = [f"m{i}" for i in range(12 - KEPT, 12)]
    assert [m["text"] for m in messages(page, "dave")] == ["first", *kept]


def test_rate_limited_joins_are_sent_again(page: Page) -> None:
    """Joins past the server's rate (2 a second, burst 2) are refused, then sent again
    later, with growing delays, until every room is joined (never closed for strikes)."""
    make_chat(page, "judy", "/chat-slow")
    page.evaluate("['a', 'b', 'c', 'd'].forEach((r) => window.clients.judy.client.join(r))")
    joined = "[...window.clients.judy.client.rooms.values()].filter((r) => r.joined).length"
    wait_for(page, lambda: page.evaluate(joined) == 5, "every room to be joined")
    codes = [e["code"] for e in events(page, "judy", "error")]
    assert codes and set(codes) == {"rate_limited"}
    assert events(page, "judy", "close") == []


def test_presence_after_members_leave(page: Page, chat_server: DemoServer) -> None:
    for name in ("erin", "frank", "grace"):
        make_chat(page, name)
    wait_for(page, lambda: members(page, "erin") == ["erin", "frank", "grace"], "all three")

    assert page.evaluate("window.clients.frank.client.leave('lobby')") is True
    wait_for(page, lambda: members(page, "erin") == ["erin", "grace"], "frank to leave")
    wait_for(page, lambda: members(page, "grace") == ["erin", "grace"], "grace to see it")
    assert {"room": "lobby", "user": "frank", "event": "left", "members": ["erin", "grace"]} in (
        events(page, "erin", "presence")
    )
    assert members(page, "frank") is None  # frank forgot the room: it is not rejoined
    assert page.evaluate("window.clients.frank.client.post('lobby', 'hi')") is None

    page.evaluate("window.clients.grace.client.close()")
    wait_for(page, lambda: members(page, "erin") == ["erin"], "grace to close")
    closes = events(page, "grace", "close")
    assert closes == [{"code": 1000, "reason": "bye", "retryInMs": None}]

    # a member cut off leaves, then comes back
    drop(chat_server, "frank")
    page.evaluate("window.makeChat('heidi')")
    wait_for(page, lambda: members(page, "erin") == ["erin", "heidi"], "heidi to join")
    drop(chat_server, "heidi")
    wait_for(page, lambda: len(events(page, "heidi", "joined")) == 2, "heidi to rejoin")

    def heidi_left_and_came_back() -> bool:
        seen = [(p["user"], p["event"]) for p in events(page, "erin", "presence")]
        return seen[-2:] == [("heidi", "left"), ("heidi", "joined")]

    wait_for(page, heidi_left_and_came_back, "erin to see heidi leave and come back")
    assert members(page, "erin") == ["erin", "heidi"]


def test_backoff_is_capped_exponential_with_jitter(page: Page) -> None:
    delays = page.evaluate(
        """() => {
          const o = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0.5 };
          const at = (r) => [0, 1, 2, 3, 4, 60, 5000].map((a) => m.backoffDelay(a, o, () => r));
          return [at(0), at(0.999999)];
        }"""
    )
    assert delays[0] == [100, 200, 400, 800, 1000, 1000, 1000]
    assert [round(d) for d in delays[1]] == [50, 100, 200, 400, 500, 500, 500]


def test_a_refused_client_gives_up_after_max_attempts(page: Page) -> None:
    closes = page.evaluate(
        """() => new Promise((resolve) => {
          const s = new m.ReconnectingSocket("/nowhere", {
            initialDelayMs: 20, maxDelayMs: 1000, maxAttempts: 3 });
          const seen = [];
          s.addEventListener("close", (e) => {
            seen.push([e.detail.code, e.detail.retryInMs, s.failures]);
            if (e.detail.retryInMs === null) resolve([seen, s.state]);
          });
          s.connect();
        })"""
    )
    seen, state = closes
    assert state == "closed"
    assert [(code, failures) for code, _, failures in seen] == [(1006, 1), (1006, 2), (1006, 3)]
    assert 10 <= seen[0][1] <= 20 and 20 <= seen[1][1] <= 40 and seen[2][1] is None


def test_a_url_function_that_fails_is_retried(page: Page) -> None:
    """The URL function throws (say, the token route is down): the attempt fails and is
    retried, and so is a URL the browser refuses."""
    closes = page.evaluate(
        """() => new Promise((resolve) => {
          const urls = [() => { throw new Error("token route down"); }, () => "ws://[bad"];
          const s = new m.ReconnectingSocket(async (attempt) => urls[attempt](),
                                             { initialDelayMs: 10, maxAttempts: 2 });
          const seen = [];
          s.addEventListener("close", (e) => {
            seen.push(e.detail.reason);
            if (e.detail.retryInMs === null) resolve(seen);
          });
          s.connect();
        })"""
    )
    assert closes[0] == "no connection: token route down"
    assert closes[1] == 'no connection: spoc-client: url is not a valid URL, got "ws://[bad"'
    assert len(closes) == 2


BAD_OPTIONS = [
    (
        'new m.ChatClient("/chat", {maxDelayMs: "10"})',
        "TypeError",
        'maxDelayMs must be a number, got "10"',
    ),
    (
        'new m.ChatClient("/chat", {initialDelayMs: NaN})',
        "TypeError",
        "initialDelayMs must be a number, got NaN",
    ),
    ('new m.ChatClient("/chat", {jitter: 2})', "RangeError", "jitter must be in [0, 1], got 2"),
    (
        'new m.ChatClient("/chat", {factor: 0.5})',
        "RangeError",
        "factor must be in [1, Infinity], got 0.5",
    ),
    ('new m.ChatClient("/chat", {initialDelayMs: -1})', "RangeError", "initialDelayMs must be in"),
    (
        'new m.ChatClient("/chat", {initialDelayMs: 10, maxDelayMs: 5})',
        "RangeError",
        "initialDelayMs (10) exceeds maxDelayMs (5)",
    ),
    ('new m.ChatClient("/chat", {retries: 3})', "TypeError", "unknown option retries"),
    ('new m.ChatClient("/chat", {maxAttempts: 0})', "RangeError", "maxAttempts must be in [1,"),
    (
        'new m.ChatClient("/chat", {maxPendingMessages: 0})',
        "RangeError",
        "maxPendingMessages must be in [1, Infinity], got 0",
    ),
    ('new m.ChatClient("/chat", {mimeType: "video/webm"})', "TypeError", "unknown option mimeType"),
    ('new m.ChatClient("/chat", "fast")', "TypeError", 'options must be an object, got "fast"'),
    ('new m.ChatClient("/chat", [1])', "TypeError", "options must be an object, got an array"),
    ("new m.ChatClient(42)", "TypeError", "url must be a string or a function, got 42"),
    ('new m.ChatClient("ws://[bad")', "TypeError", 'url is not a valid URL, got "ws://[bad"'),
    ('new m.ChatClient("ftp://x/chat")', "TypeError", "url is not a WebSocket URL"),
    (
        'new m.ChatClient("/chat").join(["lobby"])',
        "TypeError",
        "room must be a non-empty string, got an array",
    ),
    ('new m.ChatClient("/chat").join("")', "TypeError", 'room must be a non-empty string, got ""'),
    ('new m.ChatClient("/chat").post("lobby", 5)', "TypeError", "text must be a string, got 5"),
    (
        'new m.StreamPublisher("/s", {timesliceMs: 0})',
        "RangeError",
        "timesliceMs must be in [1, Infinity], got 0",
    ),
    (
        'new m.StreamPublisher("/s", {restartOnViewerJoin: "yes"})',
        "TypeError",
        'restartOnViewerJoin must be a boolean, got "yes"',
    ),
    (
        'new m.StreamViewer("/s", document.body)',
        "TypeError",
        "video must be a <video> element, got an object",
    ),
    ("m.frameChunk(3, new Uint8Array(1))", "RangeError", "kind must be 0, 1 or 2, got 3"),
]


@pytest.mark.parametrize(("code", "kind", "message"), BAD_OPTIONS)
def test_bad_arguments_are_refused_by_name(page: Page, code: str, kind: str, message: str) -> None:
    error = page.evaluate(
        f"() => {{ try {{ {code}; return null; }} catch (e) {{ return [e.name, e.message]; }} }}"
    )
    assert error is not None, f"{code} was accepted"
    name, text = error
    assert name == kind and text.startswith("spoc-client: ") and message in text


def test_notifications_reach_the_user(page: Page, chat_server: DemoServer) -> None:
    make_chat(page, "kate")
    chat = chat_server.router.channels["/chat"]
    assert isinstance(chat, ChatServer)
    chat.notify("kate", {"course": "maths", "grade": "A"})
    wait_for(page, lambda: events(page, "kate", "notification"), "the notification")
    assert events(page, "kate", "notification") == [{"payload": {"course": "maths", "grade": "A"}}]


def test_what_is_not_a_protocol_event_is_reported_not_thrown(page: Page) -> None:
    page.evaluate("window.makeChat('ivan', '/garbage')")
    wait_for(page, lambda: events(page, "ivan", "welcome"), "the welcome after the garbage")
    errors = events(page, "ivan", "error")
    assert [e["code"] for e in errors] == ["bad_server_message"] * 3
    assert errors[0]["message"] == 'not a JSON event: "not json"'
    assert page.evaluate("window.clients.ivan.client.socket.state") == "open"
    page.evaluate("window.clients.ivan.client.close()")


def test_media_framing_and_types(page: Page) -> None:
    framed = page.evaluate("() => [...m.frameChunk(m.KIND.INIT, new Uint8Array([7, 8]))]")
    assert framed == [0, 7, 8]
    mime = page.evaluate(
        """() => [m.webmMimeType(new TextEncoder().encode("..V_VP9..A_OPUS..")),
                  m.webmMimeType(new TextEncoder().encode("..V_VP8.."))]"""
    )
    assert mime == ['video/webm; codecs="vp9,opus"', 'video/webm; codecs="vp8"']


def test_the_type_declarations_name_every_export() -> None:
    """spoc-client.d.ts declares what spoc-client.js exports, no more, no less."""
    js = (STATIC / "spoc-client.js").read_text()
    dts = (STATIC / "spoc-client.d.ts").read_text()
    exported = set(re.findall(r"^export (?:const|function|class) (\w+)", js, re.M))
    declared = set(re.findall(r"^export declare (?:const|function|class) (\w+)", dts, re.M))
    assert len(exported) >= 14
    assert exported == declared


CONSUMER = """
import { ChatClient, StreamViewer, backoffDelay, type ChatMessage } from "./spoc-client.js";

const chat = new ChatClient(async (attempt: number) => `/chat?attempt=${attempt}`, {
  maxDelayMs: 5000,
});
chat.addEventListener("message", (e) => {
  const message: ChatMessage = e.detail.message;
  const id: number = message.id;
  const replay: boolean = e.detail.replay;
  console.log(id, replay);
});
chat.addEventListener("presence", (e) => {
  const members: string[] = e.detail.members;
  const event: "joined" | "left" = e.detail.event;
  console.log(members, event);
});
chat.addEventListener("close", (e) => console.log(e.detail.retryInMs ?? "gave up"));
const ref: string | null = chat.post("lobby", "hello");
const delay: number = backoffDelay(3);
const viewer = new StreamViewer("/stream/demo", document.createElement("video"));
const lastId: number | null | undefined = chat.rooms.get("lobby")?.lastId;
console.log(ref, delay, viewer.recordings, lastId);

// @ts-expect-error: an unknown option
new ChatClient("/chat", { maxDelay: 5 });
// @ts-expect-error: a number is no text
chat.post("lobby", 5);
// @ts-expect-error: a message id is a number
chat.addEventListener("message", (e) => { const id: string = e.detail.message.id; });
"""


def test_the_module_and_its_declarations_type_check(tmp_path: Path) -> None:
    """tsc (from the npm registry) accepts the module's JSDoc types in strict mode, and
    a TypeScript program written against spoc-client.d.ts, whose mistakes it catches."""
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "the type check needs node and npm on PATH"
    subprocess.run(
        [npm, "install", "--prefix", str(tmp_path), "--no-audit", "--no-fund", "typescript@5"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    tsc = [str(tmp_path / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict"]
    tsc += ["--target", "es2022", "--module", "es2022", "--lib", "dom,es2022"]
    shutil.copy(STATIC / "spoc-client.d.ts", tmp_path)
    (tmp_path / "consumer.ts").write_text(CONSUMER)
    for args in (["--allowJs", "--checkJs", str(STATIC / "spoc-client.js")], ["consumer.ts"]):
        result = subprocess.run(
            tsc + args, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr


# -- the demo page, on the demo's own router --------------------------------------------


def test_the_demo_page_resumes_after_a_cut(
    pages: tuple[Page, Page],  # noqa: F811
    server: DemoServer,  # noqa: F811
) -> None:
    alice, bob = pages
    join(alice, "alice")
    join(bob, "bob")
    pw_expect(alice.locator("#members li")).to_have_text([user("alice"), user("bob")])
    bob_id = bob.evaluate("window.demo.chat.user")

    assert server.drop(lambda c: c.connection.user == bob_id) == 1  # type: ignore[union-attr]
    pw_expect(bob.locator("#chat-status")).to_contain_text("reconnecting")
    alice.fill("#text", "while you were away")
    alice.click("#post")
    pw_expect(bob.locator("#chat-status")).to_have_text(f"in lobby as {bob_id}")
    away = bob.locator("#messages li.message", has_text="while you were away")
    pw_expect(away).to_have_count(1)
    pw_expect(bob.locator("#messages li.message").last.locator(".user")).to_have_text(user("alice"))
    pw_expect(alice.locator("#members li")).to_have_text([user("alice"), user("bob")])
    assert bob.evaluate("window.demo.chat.user") == bob_id  # the same user came back
    bob.click("#leave")
    pw_expect(alice.locator("#members li")).to_have_text([user("alice")])


def test_the_viewer_and_the_publisher_come_back_after_a_cut(
    pages: tuple[Page, Page],  # noqa: F811
    server: DemoServer,  # noqa: F811
) -> None:
    publisher, viewer = pages
    viewer.click("#watch")
    publisher.click("#publish-canvas")
    wait_for(viewer, lambda: video_time(viewer) > 1.0, "the video to play")

    def is_viewer(conn: ServerConnection) -> bool:
        request = conn.connection.request  # type: ignore[union-attr]
        return request.path == "/stream/demo" and request.query.get("role") != "publish"

    recordings = viewer.evaluate("window.demo.view.recordings")
    assert server.drop(is_viewer) == 1
    wait_for(
        viewer,
        lambda: viewer.evaluate("window.demo.view.recordings") > recordings,
        "the viewer to get a new init segment",
    )
    played = video_time(viewer)
    wait_for(viewer, lambda: video_time(viewer) > played + 1.0, "the video to play on")

    def is_publisher(conn: ServerConnection) -> bool:
        return conn.connection.request.query.get("role") == "publish"  # type: ignore[union-attr]

    publisher.evaluate(
        "window.demo.pub.addEventListener('publishing', () => { window.republished = true; })"
    )
    recordings = viewer.evaluate("window.demo.view.recordings")
    assert server.drop(is_publisher) == 1
    wait_for(publisher, lambda: publisher.evaluate("window.republished"), "a new publishing")
    pw_expect(publisher.locator("#publish-status")).to_contain_text("publishing")
    wait_for(  # the stream ended for the viewer, which came back to the new recording
        viewer,
        lambda: viewer.evaluate("window.demo.view.recordings") > recordings,
        "the viewer to get the new recording",
    )
    played = video_time(viewer)
    wait_for(viewer, lambda: video_time(viewer) > played + 1.0, "the video to play again")
    assert viewer.evaluate("window.demo.view.error") is None
    publisher.click("#stop-publish")
    viewer.click("#stop-watch")
