"""StreamServer: one publisher, many viewers, per stream (``/stream/{stream_id}``).

Binary messages from the publisher are relayed to every viewer, framed once. Their first
byte says what they carry, and is relayed with them (viewers skip it):

* ``0`` (:data:`INIT`): an initialization segment (e.g. the WebM header MediaRecorder
  emits first). The latest one is kept and sent first to every viewer who joins later.
* ``1`` (:data:`KEY`): media starting with a key frame: a late or lagging viewer
  (re)starts here.
* ``2`` (:data:`DELTA`): any other media.

A slow viewer never slows the publisher or the others: when a message would take a
viewer's queued output past ``viewer_buffer`` bytes, that viewer drops media until the
next key frame; drops are counted and the viewer gets ``{"type": "dropped", ...}``, then
``{"type": "resumed"}``. Text messages are JSON signalling (WebRTC offers, answers,
candidates) between the publisher and one viewer; see ``docs/stream-protocol.rst``.

The publisher is ``?role=publish`` (authorised by :meth:`StreamServer.can_publish`; a
second one is refused with 409). When it leaves, each viewer gets ``{"type": "ended"}``
and close code 4000 (:data:`STREAM_ENDED`); a new publisher can then take over.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .channel import ChannelServer, Connection
from .errors import Reject
from .request import Request

__all__ = ["DELTA", "INIT", "KEY", "STREAM_ENDED", "StreamServer", "StreamStats"]

INIT, KEY, DELTA = 0, 1, 2
#: close code sent to viewers when the publisher leaves
STREAM_ENDED = 4000


@dataclass
class StreamStats:
    """Counters of one stream."""

    viewers: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: int = 0


@dataclass
class _Viewer:
    waiting_key: bool = True  # skip media until a key frame
    lagging: bool = False  # waiting because media was dropped (not a late join)
    dropped: int = 0


@dataclass
class _Stream:
    publisher: Connection | None = None
    init: bytes | None = None
    viewers: dict[Connection, _Viewer] = field(default_factory=dict)
    stats: StreamStats = field(default_factory=StreamStats)


class StreamServer(ChannelServer):
    """Relays a publisher's media to its viewers, with bounded per-viewer buffers."""

    max_message_size: int | None = 16 * 2**20
    #: output queued for one viewer past which it drops media until the next key frame
    viewer_buffer: int = 2 * 2**20
    #: the core's hard bound, above ``viewer_buffer`` (control messages still pass)
    max_buffered_amount: int = 4 * 2**20
    overflow = "drop"

    #: longest text (signalling) message relayed, in characters (longer: ``too_long``)
    max_signal_size: int = 64 * 1024

    OPTIONS: ClassVar[tuple[str, ...]] = (
        *ChannelServer.OPTIONS,
        "viewer_buffer",
        "max_signal_size",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}

    # -- policy ---------------------------------------------------------------------------

    def can_publish(self, request: Request, stream_id: str) -> bool:
        """Whether this request may publish ``stream_id`` (default: yes)."""
        return True

    def authenticate(self, request: Request) -> object:
        role = request.query.get("role", "view")
        if role not in ("publish", "view"):
            raise Reject(400, "role is publish or view")
        stream_id = self._stream_id(request)
        if role == "publish":
            if not self.can_publish(request, stream_id):
                raise Reject(403, "not allowed to publish this stream")
            stream = self._streams.get(stream_id)
            if stream is not None and stream.publisher is not None:
                raise Reject(409, "this stream already has a publisher")
        return request.query.get("user")

    # -- server-side API ----------------------------------------------------------------

    def stats(self, stream_id: str) -> StreamStats:
        """A copy of the counters of ``stream_id``."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return StreamStats()
        s = stream.stats
        return StreamStats(len(stream.viewers), s.bytes_in, s.bytes_out, s.drops)

    # -- hooks ----------------------------------------------------------------------------

    def on_connect(self, conn: Connection) -> None:
        stream_id = self._stream_id(conn.request)
        with self._lock:
            stream = self._streams.setdefault(stream_id, _Stream())
            if self._is_publisher(conn):
                if stream.publisher is not None:  # lost a race with another publisher
                    conn.close(1008, "this stream already has a publisher")
                    return
                stream.publisher = conn
                stream.init = None
            else:
                stream.viewers[conn] = _Viewer()
            live = stream.publisher is not None
            init = stream.init
        if self._is_publisher(conn):
            conn.send_json({"type": "publishing", "stream": stream_id})
            return
        conn.send_json({"type": "viewing", "stream": stream_id, "live": live, "id": conn.id})
        if init is not None:
            conn.send(init)
        self._to_publisher(stream, {"type": "viewer", "event": "joined", "id": conn.id})

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        stream = self._streams.get(self._stream_id(conn.request))
        if stream is None:
            return
        if isinstance(message, bytes):
            if conn is stream.publisher and message:
                self._relay(stream, message)
            return
        if len(message) > self.max_signal_size:
            conn.send_json({"type": "error", "code": "too_long"})
            return
        try:
            data = json.loads(message)
            assert isinstance(data, dict)
        except (ValueError, AssertionError):
            conn.send_json({"type": "error", "code": "bad_json"})
            return
        if data.get("type") == "signal":
            self._signal(stream, conn, data)
        elif data.get("type") == "stats":
            stats = self.stats(self._stream_id(conn.request))
            conn.send_json({"type": "stats", **stats.__dict__})
        else:
            conn.send_json({"type": "error", "code": "unknown_type"})

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        stream_id = self._stream_id(conn.request)
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            if conn is stream.publisher:
                stream.publisher, stream.init = None, None
                viewers = list(stream.viewers)
            elif stream.viewers.pop(conn, None) is not None:
                viewers = None
            else:
                return  # a publisher that lost the race in on_connect: never registered
            if stream.publisher is None and not stream.viewers:
                del self._streams[stream_id]
        if viewers is None:
            self._to_publisher(stream, {"type": "viewer", "event": "left", "id": conn.id})
            return
        ended = json.dumps({"type": "ended", "stream": stream_id}, separators=(",", ":"))
        self.broadcast(ended, to=viewers)
        for viewer in viewers:
            viewer.close(STREAM_ENDED, "stream ended")

    # -- relay ------------------------------------------------------------------------------

    def _relay(self, stream: _Stream, media: bytes) -> None:
        kind = media[0]
        stream.stats.bytes_in += len(media)
        if kind == INIT:
            stream.init = media
        recipients = []
        for viewer, state in list(stream.viewers.items()):
            if kind == KEY:
                if state.lagging:
                    viewer.send_json({"type": "resumed", "dropped": state.dropped})
                state.waiting_key = state.lagging = False
            if kind != INIT and state.waiting_key:
                if state.lagging:  # lost to slowness, not a late join: a drop
                    self._drop(stream, viewer, state)
                continue
            if viewer.buffered_amount + len(media) > self.viewer_buffer:
                state.waiting_key = state.lagging = True
                self._drop(stream, viewer, state)
                continue
            recipients.append(viewer)
        if recipients:
            self.broadcast(media, to=recipients)
            stream.stats.bytes_out += len(media) * len(recipients)

    @staticmethod
    def _drop(stream: _Stream, viewer: Connection, state: _Viewer) -> None:
        state.dropped += 1
        stream.stats.drops += 1
        if state.dropped == 1 or state.dropped % 100 == 0:
            viewer.send_json({"type": "dropped", "dropped": state.dropped})

    def _signal(self, stream: _Stream, conn: Connection, data: dict[str, Any]) -> None:
        if conn is stream.publisher:
            target = next((v for v in stream.viewers if v.id == data.get("to")), None)
            if target is None:
                conn.send_json({"type": "error", "code": "no_such_viewer"})
            else:
                target.send_json({"type": "signal", "from": "publisher", "data": data.get("data")})
        elif not self._to_publisher(
            stream, {"type": "signal", "from": conn.id, "data": data.get("data")}
        ):
            conn.send_json({"type": "error", "code": "no_publisher"})

    @staticmethod
    def _to_publisher(stream: _Stream, event: dict[str, Any]) -> bool:
        if stream.publisher is None:
            return False
        stream.publisher.send_json(event)
        return True

    @staticmethod
    def _stream_id(request: Request) -> str:
        return request.path_params.get("stream_id", "")

    @staticmethod
    def _is_publisher(conn: Connection) -> bool:
        return conn.request.query.get("role") == "publish"


def create_stream_server(**options: Any) -> StreamServer:
    """The seed's name: a :class:`StreamServer` with these options."""
    return StreamServer(**options)
