"""spoc_sockets: routed, real-time WebSocket channels.

The public names, re-exported from the modules that own them; also the Node module's
names (``create_chat_server``, ``create_stream_server``, ``setup_websocket_handlers``).
"""

from .channel import ChannelServer, Connection, ConnectionState, Deferred
from .cli import run
from .connection import ServerConnection
from .errors import CloseCode, ProtocolError, Reject, SpocSocketsError, UsageError
from .hub import Hub
from .node_compat import create_chat_server, create_stream_server, setup_websocket_handlers
from .request import Headers, Query, Request
from .router import Response, Router

__all__ = [
    "ChannelServer",
    "CloseCode",
    "Connection",
    "ConnectionState",
    "Deferred",
    "Headers",
    "Hub",
    "ProtocolError",
    "Query",
    "Reject",
    "Request",
    "Response",
    "Router",
    "ServerConnection",
    "SpocSocketsError",
    "UsageError",
    "create_chat_server",
    "create_stream_server",
    "run",
    "setup_websocket_handlers",
]

__version__ = "0.1.0"
