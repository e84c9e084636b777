"""The Node module's names, for teams moving from it (see ``docs/from-node.rst``).

==========================================  ==========================================
Node ``socketManager.js``                   spoc_sockets
==========================================  ==========================================
``createChatWSS()``                         :func:`create_chat_server`
``createStreamWSS()``                       :func:`create_stream_server`
``setupWebSocketHandlers(server, c, s)``    :func:`setup_websocket_handlers` → Router
==========================================  ==========================================
"""

from __future__ import annotations

from .channels.chat import ChatServer, create_chat_server
from .channels.stream import StreamServer, create_stream_server
from .router import Router

__all__ = ["create_chat_server", "create_stream_server", "setup_websocket_handlers"]


def setup_websocket_handlers(
    chat: ChatServer, stream: StreamServer, router: Router | None = None
) -> Router:
    """Mount ``chat`` at ``/chat`` and ``stream`` at ``/stream`` and ``/stream/{stream_id}``
    (on ``router``, or a new one); every other path is refused with 404."""
    router = router if router is not None else Router()
    router.add("/chat", chat)
    router.add("/stream", stream)
    router.add("/stream/{stream_id}", stream)
    return router
