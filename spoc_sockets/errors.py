"""What can go wrong, and how each fault is answered.

* :class:`Reject` is raised by channel code to refuse a handshake with an HTTP status.
* :class:`CloseCode` names every RFC 6455 close code the library sends or reports.
* :class:`UsageError` means the *application* misused the API.
* :class:`ProtocolError` means the *peer* broke the protocol; the core answers it with
  an HTTP status (before the upgrade) or a close code (after it), never by raising
  out of :meth:`~spoc_sockets.ServerConnection.receive_data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

__all__ = ["CloseCode", "ProtocolError", "Reject", "SpocSocketsError", "UsageError"]


class CloseCode(IntEnum):
    """Close codes of RFC 6455 section 7.4.1 (and the IANA registry's 1012, 1013)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # reported only: the peer's close frame had no code
    ABNORMAL_CLOSURE = 1006  # reported only: the transport was lost without a close frame
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


class SpocSocketsError(Exception):
    """Base class of the library's exceptions."""


class UsageError(SpocSocketsError):
    """The application called the API in a way it does not allow.

    For example: registering two channels on the same path, opening a second
    connection for a transport that already has one, or sending an object that is
    neither ``str`` nor bytes-like.
    """


class ProtocolError(SpocSocketsError):
    """The peer broke the HTTP or WebSocket protocol.

    The core never lets this escape: it becomes :attr:`status` (an HTTP answer before
    the upgrade) or :attr:`code` (a close code after it). It is kept on
    :attr:`ServerConnection.error <spoc_sockets.ServerConnection.error>` for logging.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: CloseCode | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = tuple(headers)


class Reject(Exception):
    """Refuse a handshake with an HTTP status.

    Raise it from :meth:`ChannelServer.authenticate
    <spoc_sockets.ChannelServer.authenticate>`, or pass it to
    :meth:`Deferred.reject <spoc_sockets.Deferred.reject>`::

        raise Reject(401, "invalid token")

    ``body`` is sent as the response body (``str`` is encoded as UTF-8 and sent as
    ``text/plain``); ``headers`` are added to the response.
    """

    def __init__(
        self,
        status: int = 403,
        body: str | bytes = "",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        if not 400 <= status <= 599:
            raise UsageError(f"Reject needs a 4xx or 5xx status, not {status}")
        super().__init__(status, body)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers = tuple(headers)

    def __repr__(self) -> str:
        return f"Reject({self.status}, {self.body!r})"
