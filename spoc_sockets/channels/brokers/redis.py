"""RedisBroker: chat rooms and streams shared by every process (on any machine) using one Redis.

Nothing here makes a loop or a hook wait on Redis. Every operation is queued (a bounded
queue) for one *broker thread*, which sends what is waiting as one pipeline and calls
each operation's ``done`` with its result; a *listener thread* holds the pub/sub
connection, subscribed to the topics this process has local members for, and hands each
event to the chat's ``deliver`` (and probes that connection with a PING when it has been
silent). Both call back into the chat, whose send paths are thread-safe, so the same
broker serves the asyncio, trio, threads and ASGI adapters. :class:`Publisher` posts and
notifies from a process that serves no WebSocket, with the same scripts.

The Redis layout of a room ``R`` (every key of a room carries the hash tag ``{R}``, so
each script touches one slot), and of a stream ``S`` (hash tag ``{stream:S}``)::

    <prefix>:{R}:meta      hash: base (the epoch), last (the last id), size (bytes kept)
    <prefix>:{R}:log       stream: one entry per message, id "<message id>-0"
    <prefix>:{R}:members   hash: "<node>|<user>" -> connections of that user on that node
    <prefix>:{R}:nodes     sorted set: node -> when its presence expires (ms, Redis time)
    <prefix>:room:R        pub/sub channel of the room's events (and <prefix>:user:U)
    <prefix>:{stream:S}:claim   string: the node that publishes S (expires: presence_ttl)
    <prefix>:{stream:S}:init    string: S's init segment; :key, its latest key frame
    <prefix>:stream:S      pub/sub channel of S's media, raw bytes; b"" when S ended

A post is one Lua script: it numbers the message (``last`` + 1), appends it to the
stream, trims the stream to the bounds, and publishes it, atomically. The first post of
a room (or the first after Redis lost the room) sets the room's *epoch*: its ids start
after ``base``, the Redis time in milliseconds times 1000, so ids never restart and a
``since`` from an earlier epoch is answered with ``complete`` false.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
import re
import secrets
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ...errors import UsageError
from ...limits import Number, check_numbers, shown
from ..chat import dump_json, missed, notification, room_problem, utf8_size
from . import (
    Broker,
    BrokerUnavailable,
    Deliver,
    Done,
    HistoryPage,
    Kept,
    MediaBroker,
    MediaDeliver,
    RoomsFull,
    fit,
)

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the extra is installed with the tests
    raise ImportError("RedisBroker needs redis-py: pip install 'spoc-sockets[redis]'") from exc

__all__ = ["Publisher", "RedisBroker"]

logger = logging.getLogger("spoc_sockets.channels")

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: meta, log. ARGV: message (JSON object without id), max messages, max bytes,
# history TTL (ms), channel. Returns the stored text.
_POST = (
    _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local base = string.format('%.0f', now_ms() * 1000)
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'base', base, 'last', base, 'size', 0)
end
local id = string.format('%.0f', redis.call('HINCRBY', KEYS[1], 'last', 1))
local stored = string.sub(ARGV[1], 1, -2) .. ',"id":' .. id .. '}'
redis.call('XADD', KEYS[2], id .. '-0', 'm', stored)
local size = redis.call('HINCRBY', KEYS[1], 'size', #stored)
local count = redis.call('XLEN', KEYS[2])
while count > tonumber(ARGV[2]) or (size > tonumber(ARGV[3]) and count > 1) do
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', KEYS[2], oldest[1])
  size = redis.call('HINCRBY', KEYS[1], 'size', -#oldest[2][2])
  count = count - 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], stored)
return stored
"""
)

# KEYS: meta, log. ARGV: since (-1: the last messages), count. Returns {} when the room
# has no history, else {base, last, oldest id or '', texts...}: the last `count` newest
# first, or up to `count` + 1 after `since` (all kept when `since` is of another epoch).
_HISTORY = """
local meta = redis.call('HMGET', KEYS[1], 'base', 'last')
if not meta[1] then return {} end
local since, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local entries
if since < 0 then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', count) or {}  -- nil for 0
else
  local base, last = tonumber(meta[1]), tonumber(meta[2])
  if since == 0 then since = base end
  local start = '-'
  if since >= base and since <= last then start = string.format('%.0f', since + 1) .. '-0' end
  entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', count + 1)
end
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local out = {meta[1], meta[2], oldest and oldest[1] or ''}
for _, entry in ipairs(entries) do out[#out + 1] = entry[2][2] end
return out
"""

# The presence scripts. KEYS: members, nodes. ARGV: room, channel, this node, then their
# own. Any of them may find nodes whose presence expired (dead processes): it drops their
# members and publishes a `left` presence event for each user present through no live
# node, once (the script is atomic).
_PRESENCE = (
    _NOW_MS
    + """
local room, channel, node = ARGV[1], ARGV[2], ARGV[3]
local function present(user, nodes)
  for _, other in ipairs(nodes) do
    if other ~= node and redis.call('HEXISTS', KEYS[1], other .. '|' .. user) == 1 then
      return true
    end
  end
  return false
end
local function live_nodes()
  local now = now_ms()
  local dead = {}
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
    if other ~= node then dead[other] = true end
  end
  if next(dead) == nil then return redis.call('ZRANGE', KEYS[2], 0, -1) end
  local gone, seen = {}, {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local owner, user = string.match(field, '^([^|]*)|(.*)$')
    if dead[owner] then
      redis.call('HDEL', KEYS[1], field)
      if not seen[user] then
        seen[user] = true
        gone[#gone + 1] = user
      end
    end
  end
  for other in pairs(dead) do redis.call('ZREM', KEYS[2], other) end
  local live = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, user in ipairs(gone) do
    if redis.call('HEXISTS', KEYS[1], node .. '|' .. user) == 0 and not present(user, live) then
      redis.call('PUBLISH', channel, '{"type":"presence","room":' .. cjson.encode(room)
        .. ',"user":' .. cjson.encode(user) .. ',"event":"left"}')
    end
  end
  return live
end
local function elsewhere(user)
  return present(user, live_nodes())
end
"""
)

# ARGV: ..., user, presence TTL (ms). 1 if the user's first connection in the room.
_JOIN = (
    _PRESENCE
    + """
local user, ttl = ARGV[4], tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], now_ms() + ttl, node)
local others = elsewhere(user)
local count = redis.call('HINCRBY', KEYS[1], node .. '|' .. user, 1)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if count == 1 and not others then return 1 end
return 0
"""
)

# ARGV: ..., user. 1 if it was the user's last connection.
_LEAVE = (
    _PRESENCE
    + """
local field = node .. '|' .. ARGV[4]
if redis.call('HEXISTS', KEYS[1], field) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], field, -1) > 0 then return 0 end
redis.call('HDEL', KEYS[1], field)
if elsewhere(ARGV[4]) then return 0 end
return 1
"""
)

# The users present through a live node.
_MEMBERS = (
    _PRESENCE
    + """
local live = {}
for _, other in ipairs(live_nodes()) do live[other] = true end
local users, seen = {}, {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local owner, user = string.match(field, '^([^|]*)|(.*)$')
  if live[owner] and not seen[user] then
    seen[user] = true
    users[#users + 1] = user
  end
end
return users
"""
)

# ARGV: ..., presence TTL (ms), then user, count pairs: this node's members of the room,
# written again (a Redis that lost them gets them back); the dead nodes are found here.
_REFRESH = (
    _PRESENCE
    + """
local ttl = tonumber(ARGV[4])
local prefix = node .. '|'
local want = {}
for i = 5, #ARGV, 2 do want[prefix .. ARGV[i]] = ARGV[i + 1] end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix and not want[field] then
    redis.call('HDEL', KEYS[1], field)
  end
end
for field, count in pairs(want) do redis.call('HSET', KEYS[1], field, count) end
redis.call('ZADD', KEYS[2], now_ms() + ttl, node)
live_nodes()
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 0
"""
)

# The stream scripts. KEYS: claim, init, key. ARGV: this node, TTL (ms), then their own.
# Claim the stream (1), unless another node holds it (0); a new claim drops the old media.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 1
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# ARGV: ..., channel, media, 'init', 'key' or '' (not kept). Publishes the media as it
# is, if this node still holds the claim (1), and keeps it for late viewers.
_MEDIA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[5] == 'init' then
  redis.call('SET', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[3])
elseif ARGV[5] == 'key' then
  redis.call('SET', KEYS[3], ARGV[4])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# Keep this node's claim and media alive (the presence refresh of a publisher).
_HOLD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return 1
"""

# ARGV: ..., channel. The stream ended: its media goes, and every node is told (b"").
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[3], '')
return 1
"""

#: every script, loaded (SCRIPT LOAD) on each new connection and then run by its SHA1
_SCRIPTS = (_POST, _HISTORY, _JOIN, _LEAVE, _MEMBERS, _REFRESH, _CLAIM, _MEDIA, _HOLD, _RELEASE)

#: seconds waited, at most, for the subscription a join needs before its history is read
SUBSCRIBE_TIMEOUT = 5.0
#: seconds the listener waits for an event before it looks at the topics wanted again
LISTEN_INTERVAL = 0.05
#: messages a room's repair delivers at most, after the subscription connection was made
#: again (those posted meanwhile, that the room's stream still holds)
REPAIR_MESSAGES = 1000
#: the id at the end of a stored message
_ID = re.compile(r',"id":(\d+)\}$')
#: the backoff after a failed round trip: first and longest pause, in seconds
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 2.0


@dataclass
class _Op:
    """One operation: the commands it sends, then what to do with their replies."""

    commands: list[tuple[Any, ...]]
    finish: Callable[[list[Any]], None]
    fail: Callable[[Exception], None]
    topic: str | None = None  # wait for this subscription first
    apply: Callable[[], None] | None = None  # its effect on the local counts, when sent
    raw: bool = False  # replies as bytes (media), not text


class RedisBroker(Broker, MediaBroker):
    """Rooms, history, presence and fan-out on Redis, shared by every process using the
    same Redis (and ``prefix``); and streams (a
    :class:`~spoc_sockets.channels.brokers.MediaBroker`), whose media crosses processes
    as raw bytes.

    ``url`` is a redis-py URL (``redis://127.0.0.1:6379/0``). ``history_ttl``: seconds a
    room's history (and its ids) is kept after its last post. ``presence_ttl``: seconds
    after which the users of a process that stopped refreshing them (it died) no longer
    count as members, and their rooms get a ``left`` presence event for each (within a
    third more); each process refreshes its own every third of it.
    ``max_pending``: operations waiting for the broker thread, at most (past it, an
    operation fails with :class:`~spoc_sockets.channels.brokers.BrokerUnavailable`, and
    a publication is dropped and counted in :attr:`dropped`).
    ``max_pending_bytes``: bytes of media waiting for the broker thread, at most (past
    it, media is dropped, and counted in :attr:`dropped`, until the stream's next key
    frame). ``timeout``: seconds a
    Redis round trip may take before it fails. ``probe_interval``: seconds of silence on
    the subscription connection after which it is probed with a PING (no answer within
    ``timeout``: it is dead, and made again).
    """

    #: the numeric options (checked by :func:`~spoc_sockets.limits.check_numbers`)
    NUMBERS: ClassVar[dict[str, Number]] = {
        "history_ttl": Number(integer=False, minimum=1),
        "presence_ttl": Number(integer=False, minimum=1),
        "max_pending": Number(integer=True),
        "max_pending_bytes": Number(integer=True),
        "timeout": Number(integer=False, minimum=0.01),
        "probe_interval": Number(integer=False, minimum=0.01),
    }

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "spoc",
        history_ttl: float = 3600.0,
        presence_ttl: float = 30.0,
        max_pending: int = 10_000,
        max_pending_bytes: int = 64 * 2**20,
        timeout: float = 5.0,
        probe_interval: float = 5.0,
    ) -> None:
        _check_url("url", url)
        _check_url("prefix", prefix)
        self.url, self.prefix = url, prefix
        self.history_ttl, self.presence_ttl = history_ttl, presence_ttl
        self.max_pending, self.timeout = max_pending, timeout
        self.max_pending_bytes, self.probe_interval = max_pending_bytes, probe_interval
        check_numbers(self, self.NUMBERS)
        self._clients = _Clients(url, timeout, text=False)  # bytes: media is not text
        self._deliver: list[Deliver] = []
        self._media: list[MediaDeliver] = []
        self._closed = False
        self._start_afresh()
        after_fork = weakref.WeakMethod(self._start_afresh)
        os.register_at_fork(after_in_child=lambda: _call_weak(after_fork))
        #: publications (and media messages) dropped because ``max_pending`` operations
        #: (or ``max_pending_bytes`` of media) were waiting
        self.dropped = 0
        #: round trips (pipelines) to Redis that failed
        self.failures = 0
        #: times the subscription connection failed and was made again
        self.reconnects = 0
        #: messages delivered from a room's stream after the subscription connection was
        #: made again (posted while there was none)
        self.repaired = 0

    def _start_afresh(self) -> None:
        """The state of one process: set when made, and again in a child process made
        by ``fork`` (``spoc-sockets serve --workers N``), which has none of its
        parent's threads, connections or members, and is a node of its own."""
        self.node = secrets.token_hex(8)  # this process, in the members hashes
        self._lock = threading.Condition()
        self._ops: deque[_Op] = deque()
        self._wanted: Counter[str] = Counter()  # topic -> subscriptions in this process
        self._confirmed: set[str] = set()  # topics Redis confirmed
        self._listening = True  # False while the listener waits to connect again (backoff)
        self._local: dict[str, Counter[str]] = {}  # room -> user -> connections here
        self._last: dict[str, int] = {}  # room topic -> the last message id delivered here
        self._claims: set[str] = set()  # the streams this process publishes
        self._gaps: set[str] = set()  # topics whose subscription was lost
        self._media_bytes = 0  # media waiting for the broker thread
        self._skipping: set[str] = set()  # streams dropping media until a key frame
        self._loaded = False  # the scripts are loaded on the broker's connection
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        """Start the broker's threads in this process, on first use once attached (with
        the lock)."""
        if self._threads or self._closed or not (self._deliver or self._media):
            return
        for target, name in ((self._run, "broker"), (self._listen, "listener")):
            thread = threading.Thread(target=target, name=f"spoc-redis-{name}")
            thread.daemon = True
            self._threads.append(thread)
            thread.start()

    # -- the seam ----------------------------------------------------------------------

    def attach(self, deliver: Deliver) -> None:
        with self._lock:
            self._deliver.append(deliver)
            if self._ops or self._wanted:  # used before: start now
                self._start()

    def subscribe(self, topic: str) -> None:
        with self._lock:
            self._wanted[topic] += 1
            self._start()

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._wanted[topic] -= 1
            if self._wanted[topic] <= 0:
                del self._wanted[topic]

    def publish(self, topic: str, event: str) -> None:
        def lost(exc: Exception) -> None:
            logger.warning("publishing on %r failed: %s", topic, exc)

        op = _Op([("PUBLISH", self._channel(topic), event)], _ignore, lost)
        if not self._queue(op):
            with self._lock:
                self.dropped += 1

    def post(
        self, room: str, message: str, max_messages: int, max_bytes: int, done: Done[str]
    ) -> None:
        command = _post(self.prefix, room, message, max_messages, max_bytes, self.history_ttl)
        self._call(_Op([command], lambda r: done(str(r[0])), done, f"room:{room}"))

    def history(
        self, room: str, since: int | None, max_messages: int, max_bytes: int,
        done: Done[HistoryPage],
    ) -> None:  # fmt: skip
        def finish(replies: list[Any]) -> None:
            if replies[0]:  # where a repair of the room's fan-out would start, at the latest
                self._delivered(f"room:{room}", int(replies[0][1]), baseline=True)
            done(_page(replies[0], since, max_messages, max_bytes))

        keys = (self._key(room, "meta"), self._key(room, "log"))
        command = ("EVAL", _HISTORY, 2, *keys, -1 if since is None else since, max_messages)
        self._call(_Op([command], finish, done, topic=f"room:{room}"))

    def join(self, room: str, user: str, max_rooms: int, done: Done[bool]) -> None:
        with self._lock:
            full = room not in self._local and len(self._local) >= max_rooms
        if full:
            done(RoomsFull(room))
            return

        sent: list[bool] = []

        def apply() -> None:
            sent.append(True)
            self._count(room, user, +1)

        def fail(exc: Exception) -> None:
            if sent:  # not a member after all (the next refresh drops it from Redis too)
                self._count(room, user, -1)
            done(exc)

        command = ("EVAL", _JOIN, *self._presence(room), user, _ms(self.presence_ttl))
        self._call(_Op([command], lambda r: done(r[0] == 1), fail, f"room:{room}", apply))

    def leave(self, room: str, user: str, now: float, done: Done[bool]) -> None:
        command = ("EVAL", _LEAVE, *self._presence(room), user)
        self._call(_Op([command], lambda r: done(r[0] == 1), done, apply=self._leaving(room, user)))

    def members(self, room: str, done: Done[list[str]]) -> None:
        command = ("EVAL", _MEMBERS, *self._presence(room))
        self._call(_Op([command], lambda r: done(sorted(r[0])), done))

    # -- streams (MediaBroker) -----------------------------------------------------------

    def attach_media(self, deliver: MediaDeliver) -> None:
        with self._lock:
            self._media.append(deliver)
            if self._ops or self._wanted:  # used before: start now
                self._start()

    def claim(self, stream: str, done: Done[bool]) -> None:
        def finish(replies: list[Any]) -> None:
            if replies[0] == 1:
                with self._lock:
                    self._claims.add(stream)
            done(replies[0] == 1)

        self._call(_Op([self._stream_script(_CLAIM, stream)], finish, done))

    def release(self, stream: str) -> None:
        with self._lock:
            self._claims.discard(stream)
            self._skipping.discard(stream)
        command = self._stream_script(_RELEASE, stream, self._channel(f"stream:{stream}"))
        self._queue(_Op([command], _ignore, _release_failed))

    def publish_media(self, stream: str, media: bytes, keep: bool) -> None:
        kind = media[0] if media else None
        size = len(media)
        with self._lock:
            if kind in (0, 1):  # an init segment or a key frame: a viewer can start here
                self._skipping.discard(stream)
            if self._media_bytes + size > self.max_pending_bytes:
                self._skipping.add(stream)
            if stream in self._skipping:
                self.dropped += 1
                return
            self._media_bytes += size

        def sent() -> None:
            self._media_bytes -= size  # with the lock: the broker thread's batch

        kept = ("init" if kind == 0 else "key") if keep else ""
        channel = self._channel(f"stream:{stream}")
        command = self._stream_script(_MEDIA, stream, channel, media, kept)
        if not self._queue(_Op([command], _ignore, _media_failed, apply=sent)):
            with self._lock:
                self._media_bytes -= size
                self._skipping.add(stream)
                self.dropped += 1

    def kept(self, stream: str, done: Done[Kept]) -> None:
        def finish(replies: list[Any]) -> None:
            claim, init, key = replies[0]
            done(Kept(claim is not None, init, key))

        keys = [self._stream_key(stream, kind) for kind in ("claim", "init", "key")]
        self._call(_Op([("MGET", *keys)], finish, done, topic=f"stream:{stream}", raw=True))

    def _stream_key(self, stream: str, kind: str) -> str:
        return _key(self.prefix, f"stream:{stream}", kind)

    def _stream_script(self, script: str, stream: str, *args: object) -> tuple[object, ...]:
        keys = [self._stream_key(stream, kind) for kind in ("claim", "init", "key")]
        return ("EVAL", script, 3, *keys, self.node, _ms(self.presence_ttl), *args)

    def expire(self, now: float, after: float) -> float | None:
        return None  # Redis expires rooms by itself (history_ttl, presence_ttl)

    def room_count(self) -> int:
        """The rooms with members in this process."""
        with self._lock:
            return len(self._local)

    def close(self) -> None:
        """Stop the broker's threads (bounded) and close its connections. What is still
        queued fails with :class:`~spoc_sockets.channels.brokers.BrokerUnavailable`."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            threads, self._threads = self._threads, []
        if threads:
            self._wake()  # the listener sees it is closed now
        for thread in threads:
            thread.join(timeout=SUBSCRIBE_TIMEOUT + 1)
        self._clients.close()

    # -- keys, queue -------------------------------------------------------------------

    def _key(self, room: str, kind: str) -> str:
        return _key(self.prefix, room, kind)

    def _channel(self, topic: str) -> str:
        return f"{self.prefix}:{topic}"

    def _presence(self, room: str) -> tuple[object, ...]:
        """The head of every presence script's arguments (see ``_PRESENCE``)."""
        keys = (self._key(room, "members"), self._key(room, "nodes"))
        return (2, *keys, room, self._channel(f"room:{room}"), self.node)

    def _leaving(self, room: str, user: str) -> Callable[[], None]:
        """A leave counts here when sent, whatever Redis answers: the connection left."""
        return lambda: self._count(room, user, -1)

    def _count(self, room: str, user: str, step: int) -> None:
        with self._lock:
            users = self._local.setdefault(room, Counter())
            users[user] += step
            if users[user] <= 0:
                del users[user]
            if not users:
                del self._local[room]

    def _queue(self, op: _Op) -> bool:
        with self._lock:
            if self._closed or len(self._ops) >= self.max_pending:
                return False
            self._start()
            self._ops.append(op)
            self._lock.notify_all()
            return True

    def _call(self, op: _Op) -> None:
        if not self._queue(op):
            op.fail(BrokerUnavailable(f"{self.max_pending} operations are waiting, or closed"))

    # -- the broker thread -------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        next_refresh = time.monotonic()
        while True:
            with self._lock:
                wait = next_refresh - time.monotonic()
                if not self._ops and not self._closed and wait > 0:
                    self._lock.wait(wait)
                if self._closed:
                    batch, self._ops = list(self._ops), deque()
                    break
                batch, self._ops = list(self._ops), deque()
                wake = bool(self._unconfirmed(batch))
            if wake:
                self._wake()
            with self._lock:
                batch, unsubscribed = self._subscribed_first(batch)
                for op in batch:
                    if op.apply is not None:
                        op.apply()
                if time.monotonic() >= next_refresh:
                    batch.extend(self._refresh_ops())
                    next_refresh = time.monotonic() + self.presence_ttl / 3
            for op in unsubscribed:
                _complete(op.fail, BrokerUnavailable(f"not subscribed to {op.topic}"))
            if self._send(batch):
                failures = 0
            else:
                failures += 1
                with self._lock:
                    self._lock.wait_for(lambda: self._closed, timeout=_backoff(failures))
        for op in batch:
            op.fail(BrokerUnavailable("the broker is closed"))

    def _subscribed_first(self, batch: list[_Op]) -> tuple[list[_Op], list[_Op]]:
        """The operations to send, and those to fail: wait (bounded, the lock held)
        until Redis confirmed the subscriptions the batch needs, so that no event is
        missed between a join's history and the room's fan-out, and every post's
        poster gets it. While the listener is down, nothing waits: what needs a
        subscription fails at once."""
        needed = {op.topic for op in batch if op.topic is not None} & self._wanted.keys()

        def ready_or_closed() -> bool:
            return self._closed or not self._unconfirmed(batch)

        self._lock.wait_for(ready_or_closed, timeout=SUBSCRIBE_TIMEOUT)
        unready = self._unconfirmed(batch) if self._listening else needed
        ready = [op for op in batch if op.topic not in unready]
        return ready, [op for op in batch if op.topic in unready]

    def _unconfirmed(self, batch: list[_Op]) -> set[str]:
        """The subscriptions the batch waits for: wanted, not yet confirmed by Redis, and
        being made (none while the listener waits to connect again). With the lock."""
        if not self._listening:
            return set()
        needed = {op.topic for op in batch if op.topic is not None}
        return (needed & self._wanted.keys()) - self._confirmed

    def _wake(self) -> None:
        """Wake the listener, which may be waiting for an event, so that it makes the new
        subscriptions now rather than at its next look (``LISTEN_INTERVAL`` later): a
        message on this process's own channel, which only its listener hears."""
        with contextlib.suppress(redis.RedisError):  # it looks again soon all the same
            self._clients.commands().publish(self._channel(f"wake:{self.node}"), b"")

    def _refresh_ops(self) -> list[_Op]:
        """This process's presence in each of its rooms, written again (with the lock)."""
        ops = []
        for room, users in self._local.items():
            pairs = [item for user, count in users.items() for item in (user, count)]
            ttl = _ms(self.presence_ttl)
            command = ("EVAL", _REFRESH, *self._presence(room), ttl, *pairs)
            ops.append(_Op([command], _ignore, _refresh_failed))
        for stream in self._claims:
            ops.append(_Op([self._stream_script(_HOLD, stream)], _ignore, _refresh_failed))
        return ops

    def _send(self, batch: list[_Op]) -> bool:
        """One pipeline for the batch; each operation completes. False if Redis failed.

        Scripts run by their SHA1 (EVALSHA), loaded first on each new connection; those
        Redis no longer knows (a ``SCRIPT FLUSH``: it ran none of them) are sent again
        whole, once."""
        try:
            replies = self._execute(batch, by_sha=True)
            again = [index for index, mine in enumerate(replies) if _noscript(mine)]
            if again:
                self._loaded = False
                retried = self._execute([batch[index] for index in again], by_sha=False)
                for index, mine in zip(again, retried, strict=True):
                    replies[index] = mine
        except Exception as exc:  # Redis, or the connection to it: the thread lives on
            self.failures += 1
            self._loaded = False  # a new connection, maybe a new Redis: load them again
            logger.warning("Redis at %s failed: %s", self.url, exc)
            for op in batch:
                _complete(op.fail, BrokerUnavailable(f"Redis failed: {exc}"))
            return False
        for op, mine in zip(batch, replies, strict=True):
            errors = [reply for reply in mine if isinstance(reply, Exception)]
            if errors:
                _complete(op.fail, BrokerUnavailable(f"Redis refused: {errors[0]}"))
            else:
                _complete(op.finish, mine if op.raw else _text(mine))
        return True

    def _execute(self, batch: list[_Op], by_sha: bool) -> list[list[Any]]:
        """The replies to each operation's commands, in one pipeline."""
        client = self._clients.commands()
        if by_sha and not self._loaded:  # on every node of a cluster
            for script in _SCRIPTS:
                client.script_load(script)
            self._loaded = True
        pipe = client.pipeline(transaction=False)
        for op in batch:
            for command in op.commands:
                if by_sha and command[0] == "EVAL":
                    command = ("EVALSHA", _sha(command[1]), *command[2:])
                pipe.execute_command(*command)
        try:
            replies = pipe.execute(raise_on_error=False)
        finally:
            pipe.reset()
        out, index = [], 0
        for op in batch:
            out.append(replies[index : index + len(op.commands)])
            index += len(op.commands)
        return out

    # -- the listener thread -----------------------------------------------------------

    def _listen(self) -> None:
        failures = 0
        while not self._closed:
            pubsub = self._clients.node.pubsub()  # type: ignore[no-untyped-call]
            with self._lock:
                self._listening = True
            try:
                self._relay(pubsub)
                failures = 0
            except Exception as exc:  # Redis, or the connection to it: the thread lives on
                failures += 1
                self.reconnects += 1
                logger.warning("the subscription to Redis at %s failed: %s", self.url, exc)
            finally:
                with self._lock:
                    self._listening = False
                    self._gaps.update(self._confirmed)
                    self._confirmed.clear()
                    self._lock.notify_all()
                pubsub.close()
            with self._lock:
                self._lock.wait_for(lambda: self._closed, timeout=_backoff(failures))

    def _relay(self, pubsub: Any) -> None:
        """Keep ``pubsub`` subscribed to the topics wanted; deliver their events."""
        sent: set[str] = set()  # the topics subscribed on this connection
        skip = len(self.prefix) + 1
        probe = _Probe(self.probe_interval, self.timeout)
        wake = f"wake:{self.node}"
        pubsub.subscribe(self._channel(wake))  # see _wake
        with self._lock:  # what was unsubscribed while there was no connection
            for topic in self._last.keys() - self._wanted.keys():
                del self._last[topic]
            self._gaps.intersection_update(self._wanted.keys())
        while True:
            with self._lock:
                if self._closed:
                    return
                wanted = set(self._wanted)
                deliver = list(self._deliver)
            if wanted - sent:
                pubsub.subscribe(*(self._channel(topic) for topic in wanted - sent))
            if sent - wanted:
                pubsub.unsubscribe(*(self._channel(topic) for topic in sent - wanted))
                with self._lock:
                    for topic in sent - wanted:
                        self._last.pop(topic, None)
                        self._gaps.discard(topic)
            sent = wanted
            probe.check(pubsub, bool(sent))
            message = pubsub.get_message(timeout=LISTEN_INTERVAL)
            while message is not None:
                probe.heard()
                channel = message["channel"]
                topic = channel.decode()[skip:] if isinstance(channel, bytes) else ""
                if topic == wake:
                    pass  # woken: the topics wanted are looked at again, now
                elif message["type"] == "message" and topic.startswith("stream:"):
                    self._relay_media(topic, bytes(message["data"]))
                elif message["type"] == "message":
                    self._relay_one(deliver, topic, message["data"].decode())
                elif message["type"] in ("subscribe", "unsubscribe"):
                    with self._lock:
                        if message["type"] == "subscribe":
                            self._confirmed.add(topic)
                        else:
                            self._confirmed.discard(topic)
                        self._lock.notify_all()
                        again = message["type"] == "subscribe" and (
                            topic in self._gaps or topic in self._last
                        )
                        self._gaps.discard(topic)
                    if again:
                        self._resubscribed(deliver, topic)
                message = pubsub.get_message(timeout=0)

    def _resubscribed(self, deliver: list[Deliver], topic: str) -> None:
        """A subscription made again: repair what can be, and tell what cannot."""
        kind, _, name = topic.partition(":")
        if kind == "stream":  # media published meanwhile is lost: restart at a key frame
            self._relay_media(topic, None)
            return
        if kind == "room":
            lost = [] if self._repair(deliver, topic) else ["messages"]
            event = missed([*lost, "presence"], name, self._members_now(name))
        else:
            event = missed(["notifications"])  # nor notifications
        for callback in deliver:
            _complete(callback, topic, event)

    def _relay_media(self, topic: str, media: bytes | None) -> None:
        with self._lock:
            deliver = list(self._media)
        for callback in deliver:
            _complete(callback, topic.partition(":")[2], media)

    def _relay_one(self, deliver: list[Deliver], topic: str, event: str) -> bool:
        """Deliver ``event``, unless it is a room message delivered here already."""
        match = _ID.search(event) if topic.startswith("room:") else None
        if match is not None and not self._delivered(topic, int(match[1])):
            return False
        for callback in deliver:
            _complete(callback, topic, event)
        return True

    def _delivered(self, topic: str, last: int, baseline: bool = False) -> bool:
        """Record that the room messages of ``topic`` up to id ``last`` were delivered
        here (a ``baseline``: only if none was); False if they were already."""
        with self._lock:
            known = self._last.get(topic)
            if known is not None and (baseline or last <= known):
                return False
            if baseline and topic not in self._wanted:
                return False  # not subscribed: nothing to repair
            self._last[topic] = last
            return True

    def _members_now(self, room: str) -> list[str] | None:
        """The members of ``room`` (presence events are not kept: the list is what can be
        given again), or ``None`` if Redis did not answer."""
        try:
            reply = self._clients.commands().execute_command(
                "EVAL", _MEMBERS, *self._presence(room)
            )
        except redis.RedisError:
            return None
        return sorted(_text(reply))

    def _repair(self, deliver: list[Deliver], topic: str) -> bool:
        """Deliver the room's messages posted while there was no subscription, from the
        room's stream, before any event that came after (they wait on the connection
        meanwhile); False if some could not be (trimmed, a new epoch, too many)."""
        with self._lock:
            after = self._last.get(topic)  # None: none delivered yet, so all are new
        room = topic.partition(":")[2]
        pipe = self._clients.commands().pipeline(transaction=True)
        pipe.hget(self._key(room, "meta"), "last")
        start = "-" if after is None else f"{after + 1}-0"
        pipe.xrange(self._key(room, "log"), start, "+", count=REPAIR_MESSAGES)
        last, entries = pipe.execute()
        for _, fields in entries:
            if self._relay_one(deliver, topic, fields[b"m"].decode()):
                self.repaired += 1
        if last is None:  # the room has no history: nothing to repair
            return True
        ids = [int(entry_id.partition(b"-")[0]) for entry_id, _ in entries]
        if not ids:
            return after is not None and int(last) <= after
        return (after is None or ids[0] == after + 1) and ids[-1] >= int(last)


class Publisher:
    """Posts to rooms and notifies users of the chats on a Redis, from a process that
    serves no WebSocket (a Django or Flask view, a worker, a script).

    Give it what the serving processes' :class:`RedisBroker` and chat have: the same
    ``url`` and ``prefix``, ``history_ttl``, and the chat's ``max_history_messages``,
    ``max_history_bytes`` and ``max_text_bytes`` (the defaults are theirs). Its calls
    wait for Redis (at most ``timeout`` seconds): do not call them on an event loop.
    A call Redis did not answer raises
    :class:`~spoc_sockets.channels.brokers.BrokerUnavailable` (a post whose answer was lost
    to the ``timeout`` may have been stored all the same); a bad argument raises
    :class:`~spoc_sockets.UsageError`.
    """

    NUMBERS: ClassVar[dict[str, Number]] = {
        "history_ttl": Number(integer=False, minimum=1),
        "timeout": Number(integer=False, minimum=0.01),
        "max_history_messages": Number(integer=True),
        "max_history_bytes": Number(integer=True),
        "max_text_bytes": Number(integer=True),
        "max_room_name_bytes": Number(integer=True),
    }

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "spoc",
        history_ttl: float = 3600.0,
        timeout: float = 5.0,
        max_history_messages: int = 1000,
        max_history_bytes: int = 256 * 1024,
        max_text_bytes: int = 4000,
        max_room_name_bytes: int = 100,
    ) -> None:
        _check_url("url", url)
        _check_url("prefix", prefix)
        self.url, self.prefix, self.history_ttl, self.timeout = url, prefix, history_ttl, timeout
        self.max_history_messages, self.max_history_bytes = max_history_messages, max_history_bytes
        self.max_text_bytes, self.max_room_name_bytes = max_text_bytes, max_room_name_bytes
        check_numbers(self, self.NUMBERS)
        self._clients = _Clients(url, timeout, text=True)

    def post(self, room: str, user: str, text: str) -> int:
        """Post ``text`` to ``room`` as ``user``, as a member of the room would: stored
        in its history, and delivered to its members on every process. The message's id."""
        problem = room_problem(room, self.max_room_name_bytes)
        if problem is not None:
            raise UsageError(f"{problem}, not {shown(room)}")
        if not isinstance(user, str) or not user:
            raise UsageError(f"user is a non-empty string, not {shown(user)}")
        if not isinstance(text, str) or utf8_size(text) > self.max_text_bytes:
            raise UsageError(f"text is a string of at most {self.max_text_bytes} bytes")
        try:
            message = dump_json(
                {"type": "message", "room": room, "user": user, "text": text, "ts": time.time()}
            )
        except ValueError:
            raise UsageError("user and text are valid Unicode (no lone surrogate)") from None
        command = _post(
            self.prefix, room, message, self.max_history_messages, self.max_history_bytes,
            self.history_ttl,
        )  # fmt: skip
        stored = str(self._call(*command))
        match = _ID.search(stored)
        assert match is not None
        return int(match[1])

    def notify(self, user: str, payload: Any) -> int:
        """Send ``payload`` (anything JSON can encode) to every connection of ``user``,
        as ``ChatServer.notify`` does. How many processes had a connection of the user
        (Redis's count of the subscribers that got it)."""
        if not isinstance(user, str) or not user:
            raise UsageError(f"user is a non-empty string, not {shown(user)}")
        return int(self._call("PUBLISH", f"{self.prefix}:user:{user}", notification(payload)))

    def close(self) -> None:
        """Close the connections to Redis."""
        self._clients.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, *command: Any) -> Any:
        try:
            return self._clients.commands().execute_command(*command)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis at {self.url} failed: {exc}") from exc


class _Clients:
    """The clients of one Redis, or of a Redis Cluster (found out on first use): one of
    the node ``url`` names, for pub/sub (a cluster gives every ``PUBLISH`` to every
    node), and one for commands (sent to the node of their keys' slot, on a cluster).
    Their round trips take at most ``timeout`` seconds; their replies are ``str``
    (``text``) or ``bytes``."""

    def __init__(self, url: str, timeout: float, text: bool) -> None:
        self.options: dict[str, Any] = {
            "decode_responses": text,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),  # a script is never sent twice: a post, twice stored
        }
        self.url = url
        self.node = redis.Redis.from_url(url, **self.options)
        self._commands: Any = None
        self._lock = threading.Lock()

    def commands(self) -> Any:
        """The client for commands (the first call asks Redis whether it is a cluster)."""
        with self._lock:
            if self._commands is None:
                if self.node.info("cluster").get("cluster_enabled"):
                    self._commands = RedisCluster.from_url(self.url, **self.options)
                else:
                    self._commands = self.node
            return self._commands

    def close(self) -> None:
        if self._commands is not None and self._commands is not self.node:
            self._commands.close()
        self.node.close()


def _key(prefix: str, room: str, kind: str) -> str:
    return f"{prefix}:{{{room}}}:{kind}"


def _post(
    prefix: str, room: str, message: str, max_messages: int, max_bytes: int, history_ttl: float
) -> tuple[Any, ...]:
    """The command that stores and publishes a room message (see ``_POST``)."""
    keys = (_key(prefix, room, "meta"), _key(prefix, room, "log"))
    channel = f"{prefix}:room:{room}"
    return ("EVAL", _POST, 2, *keys, message, max_messages, max_bytes, _ms(history_ttl), channel)


class _Probe:
    """The liveness probe of a subscription connection: after ``interval`` seconds
    without a word from Redis, a PING; no answer (nor anything else) within ``timeout``
    seconds, and the connection is dead, even if its socket says nothing (a failover, a
    network that drops packets silently): :class:`ConnectionError`."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval, self.timeout = interval, timeout
        self.last = time.monotonic()  # when Redis last said something
        self.sent: float | None = None  # when the PING not answered yet went

    def heard(self) -> None:
        self.last, self.sent = time.monotonic(), None

    def check(self, pubsub: Any, subscribed: bool) -> None:
        now = time.monotonic()
        if not subscribed:  # nothing to lose, and nothing to read a PONG with
            self.last, self.sent = now, None
        elif self.sent is not None and now - self.sent > self.timeout:
            raise ConnectionError(
                f"no answer to PING in {self.timeout} s: the subscription is dead"
            )
        elif self.sent is None and now - self.last >= self.interval:
            pubsub.ping()
            self.sent = now


def _page(reply: list[str], since: int | None, max_messages: int, max_bytes: int) -> HistoryPage:
    """The page the history script's ``reply`` makes (see ``_HISTORY``)."""
    if not reply:  # no history (never, expired, or lost by Redis): whatever since saw is gone
        return HistoryPage([], complete=not since)
    base, last, oldest_entry, texts = int(reply[0]), int(reply[1]), reply[2], reply[3:]
    entries = [(text, len(text.encode())) for text in texts]  # the size a memory broker counts
    if since is None:
        return HistoryPage(fit(entries, max_bytes)[::-1])
    since = base if since == 0 else since
    oldest = int(oldest_entry.partition("-")[0]) if oldest_entry else last + 1
    complete = base <= since <= last and since >= oldest - 1
    page = fit(entries[:max_messages], max_bytes)
    return HistoryPage(page, complete, more=len(page) < len(entries))


def _complete(callback: Callable[..., None], *args: Any) -> None:
    """Run a callback: one that fails is logged, and the broker goes on."""
    try:
        callback(*args)
    except Exception:
        logger.exception("a broker callback failed")


def _call_weak(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    function = method()
    if function is not None:
        function()


def _ignore(replies: list[Any]) -> None:
    pass


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _noscript(replies: list[Any]) -> bool:
    return any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies)


def _text(reply: Any) -> Any:
    """``reply`` with its bytes decoded (UTF-8): what a text client would have had."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [_text(item) for item in reply]
    return reply


def _media_failed(exc: Exception) -> None:
    logger.warning("publishing media on Redis failed: %s", exc)


def _release_failed(exc: Exception) -> None:
    logger.warning("ending a stream on Redis failed: %s", exc)


def _refresh_failed(exc: Exception) -> None:
    logger.warning("refreshing the presence on Redis failed: %s", exc)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _backoff(failures: int) -> float:
    """Seconds to pause after ``failures`` failures in a row: capped, exponential, jittered."""
    if failures == 0:
        return 0.0
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 1)) * random.uniform(0.5, 1.0)


def _check_url(name: str, value: object) -> None:
    if not isinstance(value, str) or not value or "{" in value or "}" in value:
        raise UsageError(f"{name} is a non-empty string without braces, not {value!r}")
