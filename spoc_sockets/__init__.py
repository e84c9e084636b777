"""spoc_sockets: routed, real-time WebSocket channels.

The public names, re-exported from the modules that own them; also the Node module's
names (``create_chat_server``, ``create_stream_server``, ``setup_websocket_handlers``).
"""

from ._connection import ServerConnection
from ._hub import Hub
from .channel import ChannelServer, Connection, ConnectionState, Deferred
from .cli import run
from .errors import CloseCode, ProtocolError, Reject, SpocSocketsError, UsageError
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
