"""spoc_sockets: routed, real-time WebSocket channels.

The public names, re-exported from the modules that own them.
"""

from .channel import ChannelServer, Connection, ConnectionState, Deferred
from .cli import run
from .connection import ServerConnection
from .errors import CloseCode, ProtocolError, Reject, SpocSocketsError, UsageError
from .hub import Hub
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
    "run",
]

__version__ = "0.1.0"
