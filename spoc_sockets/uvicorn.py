"""uvicorn's wsproto WebSocket protocol, with a frame error reported in its turn.

Serve an :class:`~spoc_sockets.asgi.ASGIApp` (or any ASGI application) with it::

    uvicorn module:app --ws spoc_sockets.uvicorn:WSProtocol
    uvicorn.Config(app, ws=WSProtocol)

uvicorn's own protocols fail a connection as soon as they parse an invalid frame, even
when valid messages came before it in the same read: the application never answers them
(the Autobahn suite grades that NON-STRICT). :class:`WSProtocol` is uvicorn's wsproto
protocol except for that. A frame error waits until the application has taken every
message before it and asks for the next one, reading nothing meanwhile; then the
connection is failed: a close frame with the error's code (1002, or 1007 for invalid
UTF-8), the application's ``receive()`` returns ``websocket.disconnect`` with that code
(a later ``send()`` raises uvicorn's ``ClientDisconnected``, from uvicorn 0.53), and the
TCP connection is closed. An application that does not ask within uvicorn's close
timeout (10 s) sees the connection failed then. (The peer's own close frame is answered
at once, as uvicorn does: wsproto sends no message after it.)
:class:`~spoc_sockets.asgi.ASGIApp` hands the answers of its plain hooks to the server
before it asks for the next message, so they reach the peer before the close frame, as
on the byte-level adapters. uvicorn's ``--ws-max-size`` still closes with 1009 at once.

Once the application has returned, the TCP connection is dropped at the close timeout
even if the peer has not read all that was left to write (uvicorn's own protocol waits
for that output for good, so a peer that never reads holds the connection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from uvicorn.protocols.websockets.wsproto_impl import WSProtocol as _WSProtocol
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

if TYPE_CHECKING:
    from uvicorn._types import WebSocketEvent

__all__ = ["WSProtocol"]


class WSProtocol(_WSProtocol):
    """uvicorn's wsproto protocol; a frame error waits for the messages before it."""

    #: Seconds a frame error waits for the application, and the transport for a peer
    #: that does not read once the application returned (uvicorn's own close timeout).
    close_timeout: float = 10.0

    _failure: CloseConnection | None = None
    _failed = False  # a frame error was parsed: nothing more is read
    _failure_timer: asyncio.TimerHandle | None = None
    _abort_timer: asyncio.TimerHandle | None = None
    _receiving = False
    _lost = False

    def data_received(self, data: bytes) -> None:
        if not self._failed:  # wsproto parses nothing after a frame error: drop it
            super().data_received(data)

    def handle_close(self, event: CloseConnection) -> None:
        if self.close_sent or self.conn.state is not ConnectionState.OPEN:
            super().handle_close(event)  # the peer's close: answered at once
            return
        # wsproto parsed a frame error (the peer sent no close): fail the connection
        # once the application asks for a message after the last one before it: now if
        # it waits for one with none queued, else at its next receive() or at the timeout;
        # meanwhile nothing is read (uvicorn's receive() must not resume reading)
        self._failure, self._failed = event, True
        self.read_paused = False
        self.transport.pause_reading()
        if self._receiving and self.queue.empty():
            self._fail()
        else:
            self._failure_timer = self.loop.call_later(self.close_timeout, self._fail)

    async def receive(self) -> WebSocketEvent:
        if self._failure is not None and self.queue.empty():
            self._fail()
        self._receiving = True
        try:
            return await super().receive()
        finally:
            self._receiving = False

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self._lost:
            # uvicorn closes the transport, which waits for its output to be written: a
            # peer that never reads would hold it open for good
            self._abort_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._failure = None
        for timer in (self._failure_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _fail(self) -> None:
        failure, self._failure = self._failure, None
        if self._failure_timer is not None:
            self._failure_timer.cancel()
        if failure is None or self.close_sent or self.transport.is_closing():
            return
        self.close_sent = True  # and uvicorn's keepalive sends no more pings
        self.disconnected = True  # a later send raises ClientDisconnected (uvicorn 0.53+)
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": failure.code, "reason": failure.reason}
        )
        self.transport.write(self.conn.send(CloseConnection(failure.code, failure.reason)))
        self.transport.close()
