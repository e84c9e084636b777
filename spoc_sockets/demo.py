"""The demo application served by ``python -m spoc_sockets``: a page and the real channels.

:func:`demo_router` mounts a :class:`~spoc_sockets.chat.ChatServer` at ``/chat`` and a
:class:`~spoc_sockets.stream.StreamServer` at ``/stream`` and ``/stream/{stream_id}``
(:func:`~spoc_sockets.seed.setup_websocket_handlers`), and serves the demo page (``/``)
and its assets from the package's ``static`` directory as plain HTTP routes. The page
needs no build step and loads nothing from elsewhere, so it works offline.
"""

from __future__ import annotations

from importlib import resources

from .chat import create_chat_server
from .request import Request
from .router import HTTPHandler, Response, Router
from .seed import setup_websocket_handlers
from .stream import create_stream_server

__all__ = ["STATIC_FILES", "demo_router", "static_handler"]

#: URL path → (file in ``spoc_sockets/static``, content type)
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "application/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}

_HEADERS = (("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"))


def static_handler(name: str, content_type: str) -> HTTPHandler:
    """A plain HTTP route answering GET with the packaged file ``static/<name>``.

    The file is read once, here: handlers run on the adapter's loop and must not block.
    """
    body = resources.files("spoc_sockets").joinpath("static").joinpath(name).read_bytes()

    def handler(request: Request) -> Response:
        if request.method != "GET":
            return Response(405, "method not allowed\n", headers=(("Allow", "GET"),))
        return Response(200, body, content_type, _HEADERS)

    return handler


def demo_router() -> Router:
    """The demo's router: the real chat and stream channels, plus the page at ``/``."""
    router = setup_websocket_handlers(
        create_chat_server(trust_user_param=True), create_stream_server()
    )
    for path, (name, content_type) in STATIC_FILES.items():
        router.add_http(path, static_handler(name, content_type))
    return router
