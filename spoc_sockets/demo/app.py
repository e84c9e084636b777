"""The demo application served by ``python -m spoc_sockets``: a page and the real channels.

:func:`demo_router` mounts a :class:`~spoc_sockets.channels.chat.ChatServer` at ``/chat`` and a
:class:`~spoc_sockets.channels.stream.StreamServer` at ``/stream`` and ``/stream/{stream_id}``
(:func:`~spoc_sockets.node_compat.setup_websocket_handlers`), and serves the demo page (``/``)
and its assets from the package's ``static`` directory as plain HTTP routes. The page
needs no build step and loads nothing from elsewhere, so it works offline.

Identity works as on a real platform, in miniature: the page asks ``/token`` for a user
and gets a user id the server chose (the name asked for, plus a random suffix) signed
with HMAC-SHA256 under a secret (made for this process, unless given); the chat trusts
only that token. Both channels accept browsers only from the page's own origin.

With a Redis URL the chat keeps its rooms on Redis, and the stream spans processes
(one :class:`~spoc_sockets.channels.brokers.redis.RedisBroker` for both), so several demo
processes share them; given the same secret, each accepts the tokens the others issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from importlib import resources

from ..channels.chat import USER_NAME, ChatServer
from ..channels.stream import StreamServer
from ..errors import Reject, UsageError
from ..node_compat import setup_websocket_handlers
from ..request import Request
from ..router import HTTPHandler, Response, Router

__all__ = [
    "MIN_SECRET_BYTES",
    "STATIC_FILES",
    "TOKEN_LIFETIME",
    "DemoChat",
    "DemoStream",
    "TokenIssuer",
    "check_same_origin",
    "demo_router",
    "static_handler",
]

#: URL path → (file in ``spoc_sockets/demo/static``, content type)
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "application/javascript; charset=utf-8"),
    "/spoc-client.js": ("spoc-client.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

#: seconds a demo token stays valid
TOKEN_LIFETIME = 12 * 3600.0

#: the shortest secret a :class:`TokenIssuer` accepts, in bytes
MIN_SECRET_BYTES = 16

_HEADERS = (("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"))
_NO_STORE = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


def static_handler(name: str, content_type: str) -> HTTPHandler:
    """A plain HTTP route answering GET with the packaged file ``static/<name>``.

    The file is read once, here: handlers run on the adapter's loop and must not block.
    """
    body = resources.files("spoc_sockets.demo").joinpath("static").joinpath(name).read_bytes()

    def handler(request: Request) -> Response:
        if request.method != "GET":
            return Response(405, "method not allowed\n", headers=(("Allow", "GET"),))
        return Response(200, body, content_type, _HEADERS)

    return handler


def check_same_origin(request: Request) -> None:
    """Refuse (403) a browser whose page came from another origin than this server
    (``Origin`` must be ``http(s)://`` + the request's ``Host``): no other site can open
    a socket with a visitor's credentials. Clients that send no ``Origin`` are not
    browsers, and pass."""
    origin = request.origin
    if origin is None:
        return
    host = request.headers.get("host")
    if host is None or origin not in (f"http://{host}", f"https://{host}"):
        raise Reject(403, f"origin {origin:.100} is not this server's\n")


class TokenIssuer:
    """Signs and checks user tokens: ``<user>.<expiry>.<HMAC-SHA256>``, base64url.

    ``secret`` (at least :data:`MIN_SECRET_BYTES` bytes) signs the tokens: processes
    given the same one accept each other's tokens. ``None`` (the default): a random
    secret that lives in this process only, so a restart logs everyone out.
    """

    def __init__(
        self,
        lifetime: float = TOKEN_LIFETIME,
        clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
    ) -> None:
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES):
            what = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
            raise UsageError(f"secret is at least {MIN_SECRET_BYTES} bytes, not {what}")
        self._secret = secrets.token_bytes(32) if secret is None else secret
        self.lifetime = lifetime
        self.clock = clock

    def issue(self, name: str) -> tuple[str, str]:
        """A new user id for someone who asked for ``name``, and its token."""
        user = f"{name[:25]}-{secrets.token_hex(3)}"
        body = f"{user}\n{int(self.clock() + self.lifetime)}".encode()
        return user, f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, token: str) -> str | None:
        """The user id of a valid, unexpired token, else ``None``."""
        body_b64, _, mac_b64 = token.partition(".")
        try:
            body, mac = _unb64(body_b64), _unb64(mac_b64)
            user, _, expires = body.decode().partition("\n")
            valid = hmac.compare_digest(mac, self._mac(body)) and self.clock() < int(expires)
        except ValueError:
            return None
        return user if valid else None

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()

    def handler(self, request: Request) -> Response:
        """``GET /token?name=<name>``: ``{"user": ..., "token": ...}``, or 400."""
        if request.method != "GET":
            return Response(405, "method not allowed\n", headers=(("Allow", "GET"),))
        name = request.query.get("name", "")
        if not USER_NAME.fullmatch(name):
            reason = "name is 1 to 32 ASCII letters, digits, '.', '_' or '-', not guest...\n"
            return Response(400, reason)
        user, token = self.issue(name)
        body = json.dumps({"user": user, "token": token})
        return Response(200, body, "application/json", _NO_STORE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if len(text) > 200:
        raise ValueError("token too long")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DemoChat(ChatServer):
    """The chat, for clients of the demo page: its origin only, users by token."""

    def __init__(self, tokens: TokenIssuer, **options: object) -> None:
        super().__init__(**options)
        self.tokens = tokens

    def check_origin(self, request: Request) -> None:
        check_same_origin(request)

    def authenticate(self, request: Request) -> object:
        """The token's user; no token: a guest; a bad or expired token: 401."""
        token = request.query.get("token")
        if token is None:
            return None
        user = self.tokens.verify(token)
        if user is None:
            raise Reject(401, "invalid or expired token: ask /token for a new one\n")
        return user


class DemoStream(StreamServer):
    """The stream, for clients of the demo page: its origin only; anyone may publish
    (a demo; a platform decides through ``can_publish``)."""

    def check_origin(self, request: Request) -> None:
        check_same_origin(request)

    def can_publish(self, request: Request, stream_id: str, user: object) -> bool:
        return True


def demo_router(redis_url: str | None = None, secret: bytes | None = None) -> Router:
    """The demo's router: the real chat and stream channels, the page at ``/``, and the
    token route at ``/token``.

    ``redis_url``: keep the chat's rooms on that Redis, and share the streams through
    it (one :class:`~spoc_sockets.channels.brokers.redis.RedisBroker`), with every demo
    process using it; ``None``: in this process. ``secret``: what signs the tokens (see
    :class:`TokenIssuer`)."""
    tokens = TokenIssuer(secret=secret)
    if redis_url is None:
        chat, stream = DemoChat(tokens), DemoStream()
    else:
        from ..channels.brokers.redis import RedisBroker  # needs the redis extra

        broker = RedisBroker(redis_url)
        chat, stream = DemoChat(tokens, broker=broker), DemoStream(broker=broker)
    router = setup_websocket_handlers(chat, stream)
    for path, (name, content_type) in STATIC_FILES.items():
        router.add_http(path, static_handler(name, content_type))
    router.add_http("/token", tokens.handler)
    return router
