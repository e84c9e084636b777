"""The built-in channels, applications of the core: :mod:`~spoc_sockets.channels.chat`
(rooms, presence, history, notifications) and :mod:`~spoc_sockets.channels.stream`
(live audio/video relay), with the chat's storage behind
:mod:`~spoc_sockets.channels.brokers`.
"""

from .chat import ChatServer, create_chat_server
from .stream import StreamServer, create_stream_server

__all__ = ["ChatServer", "StreamServer", "create_chat_server", "create_stream_server"]
