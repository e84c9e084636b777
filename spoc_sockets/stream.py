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

The publisher is ``?role=publish`` (authorised by :meth:`StreamServer.can_publish`,
which by default refuses guests; a second one is refused with 409). When it leaves, each
viewer gets ``{"type": "ended"}`` and close code 4000 (:data:`STREAM_ENDED`); a new
publisher can then take over.

What a client can make the server hold is bounded: streams per server and per user, the
init segment kept for late viewers, signalling messages (size and nesting).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .channel import ChannelServer, Connection
from .chat import check_options, dump_json, load_json
from .errors import CloseCode, Reject, UsageError
from .request import Request

__all__ = ["DELTA", "INIT", "KEY", "STREAM_ENDED", "STREAM_ID", "StreamServer", "StreamStats"]

INIT, KEY, DELTA = 0, 1, 2
#: close code sent to viewers when the publisher leaves
STREAM_ENDED = 4000
#: the stream ids accepted: 1 to 64 letters, digits, ``.``, ``_`` or ``-`` (and the empty
#: id of a channel mounted without ``{stream_id}``)
STREAM_ID = re.compile(r"[\w.-]{0,64}")


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
    #: deepest nesting of a signalling message (the object itself is level 1)
    max_json_depth: int = 8
    #: largest init segment kept for late viewers, in bytes (larger: ``init_too_large``);
    #: at most half of ``max_buffered_amount``, so a late viewer's queue always takes it
    max_init_size: int = 1 * 2**20
    #: streams (ids with a publisher or viewers) this server holds at once (more: 503)
    max_streams: int = 1000
    #: streams one user publishes at once; guests count per address (more: 429)
    max_streams_per_user: int = 4

    #: the numeric options: (least value, whether it is an integer)
    LIMITS: ClassVar[dict[str, tuple[float, bool]]] = {
        "viewer_buffer": (1, True),
        "max_signal_size": (1, True),
        "max_json_depth": (1, True),
        "max_init_size": (1, True),
        "max_streams": (1, True),
        "max_streams_per_user": (1, True),
    }
    OPTIONS: ClassVar[tuple[str, ...]] = (*ChannelServer.OPTIONS, *LIMITS)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._publishing: Counter[object] = Counter()  # publisher key -> streams

    def _check_options(self) -> None:
        super()._check_options()
        check_options(self, self.LIMITS)
        if self.max_init_size > self.max_buffered_amount // 2:
            raise UsageError(
                f"max_init_size ({self.max_init_size}) is at most half of max_buffered_amount"
                f" ({self.max_buffered_amount}), or a late viewer could miss the init segment"
            )

    # -- policy ---------------------------------------------------------------------------

    def identify(self, request: Request) -> object:
        """The user making ``request``, or ``None`` for a guest (the default: everyone).
        Override it with the platform's authentication."""
        return None

    def can_publish(self, request: Request, stream_id: str, user: object) -> bool:
        """Whether ``user`` (from :meth:`identify`) may publish ``stream_id``.
        The default refuses guests: anyone may publish only where a platform says so."""
        return user is not None

    def authenticate(self, request: Request) -> object:
        """Checks the role, the stream id and the bounds, then :meth:`identify` and
        :meth:`can_publish`: override those two rather than this method."""
        role = request.query.get("role", "view")
        if role not in ("publish", "view"):
            raise Reject(400, "role is publish or view")
        stream_id = self._stream_id(request)
        if not STREAM_ID.fullmatch(stream_id):
            raise Reject(400, "a stream id is 1 to 64 letters, digits, '.', '_' or '-'")
        user = self.identify(request)
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None and len(self._streams) >= self.max_streams:
                raise Reject(503, "this server carries all the streams it can")
        if role == "publish":
            if not self.can_publish(request, stream_id, user):
                raise Reject(403, "not allowed to publish this stream")
            if stream is not None and stream.publisher is not None:
                raise Reject(409, "this stream already has a publisher")
            if self._publishing[self._publisher_key(request, user)] >= self.max_streams_per_user:
                raise Reject(429, "this user already publishes all the streams it may")
        return user

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
            stream = self._streams.get(stream_id)
            if stream is None:
                if len(self._streams) >= self.max_streams:  # lost a race for the last one
                    conn.close(CloseCode.TRY_AGAIN_LATER, "too many streams")
                    return
                stream = self._streams[stream_id] = _Stream()
            if self._is_publisher(conn):
                key = self._publisher_key(conn.request, conn.user)
                refusal = None  # lost a race with another publisher, or for the quota
                if stream.publisher is not None:
                    refusal = "this stream already has a publisher"
                elif self._publishing[key] >= self.max_streams_per_user:
                    refusal = "this user already publishes all the streams it may"
                if refusal is not None:
                    conn.close(CloseCode.POLICY_VIOLATION, refusal)
                    if stream.publisher is None and not stream.viewers:
                        del self._streams[stream_id]
                    return
                self._publishing[key] += 1
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
            data = load_json(message, self.max_json_depth)
        except ValueError:
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
                key = self._publisher_key(conn.request, conn.user)
                self._publishing[key] -= 1
                if self._publishing[key] <= 0:
                    del self._publishing[key]
            elif stream.viewers.pop(conn, None) is not None:
                viewers = None
            else:
                return  # a publisher that lost the race in on_connect: never registered
            if stream.publisher is None and not stream.viewers:
                del self._streams[stream_id]
        if viewers is None:
            self._to_publisher(stream, {"type": "viewer", "event": "left", "id": conn.id})
            return
        ended = dump_json({"type": "ended", "stream": stream_id})
        self.broadcast(ended, to=viewers)
        for viewer in viewers:
            viewer.close(STREAM_ENDED, "stream ended")

    # -- relay ------------------------------------------------------------------------------

    def _relay(self, stream: _Stream, media: bytes) -> None:
        kind = media[0]
        if kind == INIT and len(media) > self.max_init_size:
            stream.init = None  # the recording it started is not decodable either
            if stream.publisher is not None:
                error = {"type": "error", "code": "init_too_large", "max": self.max_init_size}
                stream.publisher.send_json(error)
            return
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
        sender: int | str = "publisher" if conn is stream.publisher else conn.id
        try:  # encoded here, once: what cannot be is the sender's mistake
            event = dump_json({"type": "signal", "from": sender, "data": data.get("data")})
        except ValueError:
            conn.send_json({"type": "error", "code": "bad_json"})
            return
        if conn is stream.publisher:
            target = next((v for v in stream.viewers if v.id == data.get("to")), None)
            if target is None:
                conn.send_json({"type": "error", "code": "no_such_viewer"})
            else:
                target.send(event)
        elif not self._to_publisher(stream, event):
            conn.send_json({"type": "error", "code": "no_publisher"})

    @staticmethod
    def _to_publisher(stream: _Stream, event: dict[str, Any] | str) -> bool:
        if stream.publisher is None:
            return False
        stream.publisher.send(event if isinstance(event, str) else dump_json(event))
        return True

    @staticmethod
    def _stream_id(request: Request) -> str:
        return request.path_params.get("stream_id", "")

    @staticmethod
    def _publisher_key(request: Request, user: object) -> object:
        """Whose quota a publisher counts against: its user, or a guest's address."""
        if user is not None:
            return ("user", user)
        return ("guest", request.peer[0] if request.peer else None)

    @staticmethod
    def _is_publisher(conn: Connection) -> bool:
        return conn.request.query.get("role") == "publish"


def create_stream_server(**options: Any) -> StreamServer:
    """The seed's name: a :class:`StreamServer` with these options."""
    return StreamServer(**options)
