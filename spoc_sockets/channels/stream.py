"""StreamServer: one publisher, many viewers, per stream (``/stream/{stream_id}``).

Binary messages from the publisher are relayed to every viewer, framed once. Their first
byte says what they carry, and is relayed with them (viewers skip it):

* ``0`` (:data:`INIT`): an initialization segment (e.g. the WebM header MediaRecorder
  emits first). The latest one is kept and sent first to every viewer who joins later.
* ``1`` (:data:`KEY`): media starting with a key frame: a late or lagging viewer
  (re)starts here.
* ``2`` (:data:`DELTA`): any other media.

A slow viewer never slows the publisher or the others: when a message would take a
viewer's queued output past ``viewer_buffer_bytes``, that viewer drops media until the
next key frame; drops are counted and the viewer gets ``{"type": "dropped", ...}``, then
``{"type": "resumed"}``. Text messages are JSON signalling (WebRTC offers, answers,
candidates) between the publisher and one viewer; see ``docs/stream-protocol.rst``.

The publisher is ``?role=publish`` (authorised by :meth:`StreamServer.can_publish`,
which by default refuses guests; a second one is refused with 409). When it leaves, each
viewer gets ``{"type": "ended"}`` and close code 4000 (:data:`STREAM_ENDED`); a new
publisher can then take over.

With a ``broker`` (a :class:`~spoc_sockets.channels.brokers.MediaBroker`, such as
:class:`~spoc_sockets.channels.brokers.redis.RedisBroker`), a stream spans processes: its
publisher on one, viewers on any; see ``docs/scale-out.rst``. Without one (the default),
everything stays in this process.

What a client can make the server hold is bounded: live streams per server and per user,
streams without a publisher that viewers wait on per address, the init segment kept for
late viewers, signalling messages (size and nesting).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..channel import ChannelServer, Connection
from ..errors import CloseCode, Reject, UsageError
from ..limits import Number, shown
from ..request import Request
from .brokers import Kept, MediaBroker
from .chat import dump_json, load_json, utf8_size

__all__ = ["DELTA", "INIT", "KEY", "STREAM_ENDED", "STREAM_ID", "StreamServer", "StreamStats"]

INIT, KEY, DELTA = 0, 1, 2
#: close code sent to viewers when the publisher leaves
STREAM_ENDED = 4000
#: the stream ids accepted: 1 to 64 ASCII letters, digits, ``.``, ``_`` or ``-`` (no
#: look-alike letters of other scripts; and the empty id of a channel mounted without
#: ``{stream_id}``)
STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{0,64}")


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
    pending: bool = False  # waiting for what the broker keeps (a late viewer): no media yet
    init: bytes | None = None  # an init segment relayed while pending


@dataclass
class _Stream:
    publisher: Connection | None = None
    init: bytes | None = None
    key: bytes | None = None  # the latest key frame (kept with a broker only)
    claiming: Connection | None = None  # a publisher whose claim the broker has not answered
    subscribed: bool = False  # to the broker's media of this stream
    viewers: dict[Connection, _Viewer] = field(default_factory=dict)
    addresses: Counter[object] = field(default_factory=Counter)  # address -> viewers
    stats: StreamStats = field(default_factory=StreamStats)


class StreamServer(ChannelServer):
    """Relays a publisher's media to its viewers, with bounded per-viewer buffers."""

    max_message_size: int | None = 16 * 2**20
    #: output queued for one viewer past which it drops media until the next key frame
    viewer_buffer_bytes: int = 2 * 2**20
    #: the core's hard bound, above ``viewer_buffer_bytes`` (control messages still pass)
    max_buffered_amount: int = 4 * 2**20
    overflow = "drop"

    #: longest text (signalling) message relayed, in bytes of UTF-8 (longer: ``too_long``)
    max_signal_size: int = 64 * 1024
    #: deepest nesting of a signalling message (the object itself is level 1)
    max_json_depth: int = 8
    #: largest init segment kept for late viewers, in bytes (larger: ``init_too_large``);
    #: at most half of ``max_buffered_amount``, so a late viewer's queue always takes it
    #: (with a broker, the latest key frame is kept too, if no larger)
    max_init_size: int = 1 * 2**20
    #: live streams (with a publisher) this server carries at once (more: 503)
    max_streams: int = 1000
    #: streams one user publishes at once; guests count per address (more: 429)
    max_streams_per_user: int = 4
    #: streams without a publisher that viewers from one address wait on at once
    #: (more: 429)
    max_waiting_streams_per_address: int = 16
    #: shares the streams with other processes (``None``: in this process only)
    broker: MediaBroker | None = None

    RENAMED: ClassVar[dict[str, str]] = {"viewer_buffer": "viewer_buffer_bytes"}
    NUMBERS: ClassVar[dict[str, Number]] = {
        **ChannelServer.NUMBERS,
        "viewer_buffer_bytes": Number(integer=True),
        "max_signal_size": Number(integer=True),
        "max_json_depth": Number(integer=True),
        "max_init_size": Number(integer=True),
        "max_streams": Number(integer=True),
        "max_streams_per_user": Number(integer=True),
        "max_waiting_streams_per_address": Number(integer=True),
    }
    OPTIONS: ClassVar[tuple[str, ...]] = (
        *ChannelServer.OPTIONS,
        *(name for name in NUMBERS if name not in ChannelServer.OPTIONS),
        "broker",
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._publishing: Counter[object] = Counter()  # publisher key -> streams
        self._live = 0  # streams with a publisher
        self._waiting: Counter[object] = Counter()  # address -> streams without publisher
        if self.broker is not None:
            self.broker.attach_media(self._deliver)

    def _check_options(self) -> None:
        super()._check_options()
        if self.max_init_size > self.max_buffered_amount // 2:
            raise UsageError(
                f"max_init_size ({self.max_init_size}) is at most half of max_buffered_amount"
                f" ({self.max_buffered_amount}), or a late viewer could miss the init segment"
            )
        if self.broker is not None and not isinstance(self.broker, MediaBroker):
            raise UsageError(f"broker is a MediaBroker or None, not {shown(self.broker)}")

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
            raise Reject(400, "a stream id is 1 to 64 ASCII letters, digits, '.', '_' or '-'")
        user = self.identify(request)
        if role == "publish" and not self.can_publish(request, stream_id, user):
            raise Reject(403, "not allowed to publish this stream")
        with self._lock:
            refusal = self._refusal(self._streams.get(stream_id), request, user)
        if refusal is not None:
            raise Reject(refusal[0], refusal[2])
        return user

    def _refusal(
        self, stream: _Stream | None, request: Request, user: object
    ) -> tuple[int, int, str] | None:
        """The bound a new connection would break: (HTTP status, close code, reason), or
        ``None``. Checked at the handshake, and again (under the lock) when it opens."""
        live = stream is not None and stream.publisher is not None
        if request.query.get("role") == "publish":
            if live or (stream is not None and stream.claiming is not None):
                return 409, CloseCode.POLICY_VIOLATION, "this stream already has a publisher"
            if self._live >= self.max_streams:
                return 503, CloseCode.TRY_AGAIN_LATER, "this server carries all the streams it can"
            if self._publishing[self._publisher_key(request, user)] >= self.max_streams_per_user:
                reason = "this user already publishes all the streams it may"
                return 429, CloseCode.POLICY_VIOLATION, reason
            return None
        address = _address(request)
        new = stream is None or not stream.addresses[address]
        if not live and new and self._waiting[address] >= self.max_waiting_streams_per_address:
            reason = "this address already waits on all the streams it may"
            return 429, CloseCode.POLICY_VIOLATION, reason
        return None

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
            refusal = self._refusal(stream, conn.request, conn.user)
            if refusal is not None:  # lost a race for a bound since the handshake
                conn.close(refusal[1], refusal[2])
                return
            if stream is None:
                stream = self._streams[stream_id] = _Stream()
            if self._is_publisher(conn):
                self._publishing[self._publisher_key(conn.request, conn.user)] += 1
                self._live += 1
                if self.broker is None:
                    self._publish(stream, conn)
                else:  # the stream's publisher once the broker says no other process is
                    stream.claiming = conn
            else:
                viewer = stream.viewers[conn] = _Viewer()
                address = _address(conn.request)
                stream.addresses[address] += 1
                if stream.publisher is None and stream.addresses[address] == 1:
                    self._waiting[address] += 1
                remote = self.broker is not None and stream.publisher is None
                viewer.pending = remote  # its publisher may be on another process
                subscribe = remote and not stream.subscribed
                stream.subscribed |= subscribe
            kept = Kept(stream.publisher is not None, stream.init, stream.key)
        if self._is_publisher(conn):
            if self.broker is None:
                conn.send_json({"type": "publishing", "stream": stream_id})
            else:
                self.broker.claim(stream_id, lambda claimed: self._claimed(conn, claimed))
            return
        if not viewer.pending:
            self._welcome(conn, stream_id, kept)
            self._to_publisher(stream, {"type": "viewer", "event": "joined", "id": conn.id})
            return
        assert self.broker is not None
        if subscribe:
            self.broker.subscribe(f"stream:{stream_id}")
        self.broker.kept(stream_id, lambda kept: self._kept(conn, stream_id, kept))

    def _welcome(self, conn: Connection, stream_id: str, kept: Kept) -> None:
        """A new viewer's start: ``viewing``, then the init segment and the latest key
        frame kept (it skips media until the next key frame)."""
        conn.send_json({"type": "viewing", "stream": stream_id, "live": kept.live, "id": conn.id})
        for media in (kept.init, kept.key):
            if media is not None:
                conn.send(media)

    def _publish(self, stream: _Stream, conn: Connection) -> None:
        """``conn`` becomes the stream's publisher (with the lock)."""
        stream.publisher, stream.init, stream.key = conn, None, None
        _discount(self._waiting, stream.addresses)  # its viewers wait no more

    def _claimed(self, conn: Connection, claimed: bool | Exception) -> None:
        """The broker's answer to a publisher's claim of its stream."""
        with self._lock:
            stream = self._streams.get(self._stream_id(conn.request))
            if stream is None or stream.claiming is not conn:
                return  # it left meanwhile
            if claimed is True:
                stream.claiming = None
                self._publish(stream, conn)
        if isinstance(claimed, Exception):
            conn.close(CloseCode.TRY_AGAIN_LATER, "the streams' broker is unavailable")
        elif not claimed:
            conn.close(CloseCode.POLICY_VIOLATION, "this stream already has a publisher")
        else:
            conn.send_json({"type": "publishing", "stream": self._stream_id(conn.request)})

    def _kept(self, conn: Connection, stream_id: str, kept: Kept | Exception) -> None:
        """The broker's answer for a late viewer: what the stream keeps."""
        stream = self._streams.get(stream_id)
        state = stream.viewers.get(conn) if stream is not None else None
        if state is None:
            return  # it left meanwhile
        if isinstance(kept, Exception):
            conn.close(CloseCode.TRY_AGAIN_LATER, "the streams' broker is unavailable")
            return
        if state.init is not None:  # relayed meanwhile: newer than the one kept
            kept = Kept(True, state.init)
        self._welcome(conn, stream_id, kept)
        state.pending, state.init = False, None

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        stream = self._streams.get(self._stream_id(conn.request))
        if stream is None or (conn is not stream.publisher and conn not in stream.viewers):
            return  # a stream that ended: its viewers are being closed
        if isinstance(message, bytes):
            if conn is stream.publisher and message and self._relay(stream, message):
                self._share(conn, stream, message)
            return
        if utf8_size(message) > self.max_signal_size:
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
            claiming = False
            if conn is stream.publisher or conn is stream.claiming:
                self._live -= 1
                _discount(self._publishing, [self._publisher_key(conn.request, conn.user)])
            if conn is stream.publisher:  # the stream ends: its viewers are closed
                del self._streams[stream_id]
                viewers = list(stream.viewers)
                if self.broker is not None:
                    self.broker.release(stream_id)
            elif claiming := conn is stream.claiming:  # refused, or left before the answer
                stream.claiming = None
                viewers = None
            elif stream.viewers.pop(conn, None) is not None:
                viewers = None
                address = _address(conn.request)
                _discount(stream.addresses, [address])
                if stream.publisher is None and not stream.addresses[address]:
                    _discount(self._waiting, [address])
            else:
                return  # refused in on_connect, or a viewer of a stream that ended
            if stream.publisher is None and stream.claiming is None and not stream.viewers:
                self._streams.pop(stream_id, None)
        if viewers is None:
            if not claiming:
                self._to_publisher(stream, {"type": "viewer", "event": "left", "id": conn.id})
            if stream_id not in self._streams:
                self._unsubscribe(stream_id, stream)
            return
        self._unsubscribe(stream_id, stream)
        self._end(stream_id, viewers)

    def _end(self, stream_id: str, viewers: list[Connection]) -> None:
        """Tell ``viewers`` the stream ended, and close them."""
        ended = dump_json({"type": "ended", "stream": stream_id})
        self.broadcast(ended, to=viewers)
        for viewer in viewers:
            viewer.close(STREAM_ENDED, "stream ended")

    # -- relay ------------------------------------------------------------------------------

    def _relay(self, stream: _Stream, media: bytes) -> bool:
        """Relay ``media`` to the viewers here; False if it is refused (too large)."""
        kind = media[0]
        if kind == INIT and len(media) > self.max_init_size:
            stream.init = stream.key = None  # the recording it started is not decodable
            if stream.publisher is not None:
                error = {"type": "error", "code": "init_too_large", "max": self.max_init_size}
                stream.publisher.send_json(error)
            return False
        stream.stats.bytes_in += len(media)
        if kind == INIT:
            stream.init, stream.key = media, None
        elif kind == KEY and self.broker is not None:
            stream.key = media if len(media) <= self.max_init_size else None
        recipients = []
        for viewer, state in list(stream.viewers.items()):
            if state.pending:
                state.init = media if kind == INIT else state.init
                continue
            if kind == KEY:
                if state.lagging:
                    viewer.send_json({"type": "resumed", "dropped": state.dropped})
                state.waiting_key = state.lagging = False
            if kind != INIT and state.waiting_key:
                if state.lagging:  # lost to slowness, not a late join: a drop
                    self._drop(stream, viewer, state)
                continue
            if viewer.buffered_amount + len(media) > self.viewer_buffer_bytes:
                state.waiting_key = state.lagging = True
                self._drop(stream, viewer, state)
                continue
            recipients.append(viewer)
        if recipients:
            self.broadcast(media, to=recipients)
            stream.stats.bytes_out += len(media) * len(recipients)
        return True

    # -- across processes (with a broker) ----------------------------------------------------

    def _share(self, conn: Connection, stream: _Stream, media: bytes) -> None:
        """Publish the local publisher's ``media`` to the other processes: as it is."""
        if self.broker is None:
            return
        keep = media[0] == INIT or (media[0] == KEY and media is stream.key)
        self.broker.publish_media(self._stream_id(conn.request), media, keep)

    def _deliver(self, stream_id: str, media: bytes | None) -> None:
        """Media of a publisher on another process (``b""``: it ended; ``None``: some
        may have been missed)."""
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None or stream.publisher is not None:
                return  # no viewer here; or published here (relayed here already)
            if media == b"":  # its viewers here are closed (a publisher claiming it stays)
                _discount(self._waiting, stream.addresses)
                viewers = list(stream.viewers)
                stream.viewers.clear()
                stream.addresses.clear()
                if gone := stream.claiming is None:
                    del self._streams[stream_id]
        if media == b"":
            if gone:
                self._unsubscribe(stream_id, stream)
            self._end(stream_id, viewers)
        elif media is None:  # what was missed counts as a drop: the viewers are told
            for viewer, state in list(stream.viewers.items()):
                if not state.pending:
                    state.waiting_key = state.lagging = True
                    self._drop(stream, viewer, state)
        else:
            self._relay(stream, media)

    def _unsubscribe(self, stream_id: str, stream: _Stream) -> None:
        """The stream is gone from here: its media is not needed any more."""
        with self._lock:
            subscribed, stream.subscribed = stream.subscribed, False
        if subscribed and self.broker is not None:
            self.broker.unsubscribe(f"stream:{stream_id}")

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
        return ("guest", _address(request))

    @staticmethod
    def _is_publisher(conn: Connection) -> bool:
        return conn.request.query.get("role") == "publish"


def _address(request: Request) -> object:
    """The client's address: what guests' bounds count per."""
    return request.peer[0] if request.peer else None


def _discount(counter: Counter[object], keys: Iterable[object]) -> None:
    """One less for each of ``keys``, forgetting those that reach zero."""
    for key in list(keys):
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]


def create_stream_server(**options: Any) -> StreamServer:
    """The Node module's name (``createStreamWSS``): a :class:`StreamServer` with these options."""
    return StreamServer(**options)
