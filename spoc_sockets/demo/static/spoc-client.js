// spoc-client.js: a browser client for the spoc_sockets chat and stream protocols.
// One ES module, no build step, no dependency. Types: spoc-client.d.ts beside it.
//
//   import { ChatClient } from "/spoc-client.js";
//   const chat = new ChatClient("/chat");
//   chat.addEventListener("message", (e) => console.log(e.detail.message.text));
//   chat.connect();
//   chat.join("lobby");
//
// Every client reconnects by itself (capped exponential backoff with jitter) until its
// close() is called. The chat client rejoins its rooms with `since` and pages through the
// history it missed, so its "message" events carry each message of a room once, in id
// order, across reconnections. The stream clients relay MediaRecorder chunks (publisher)
// and play them through MediaSource (viewer), each chunk prefixed with its kind byte.
/**
 * The reconnection options every client takes, and their defaults.
 * @type {Readonly<{initialDelayMs: number, maxDelayMs: number, factor: number, jitter: number, maxAttempts: number}>}
 */
export const RECONNECT_DEFAULTS = Object.freeze({
  initialDelayMs: 500, // the first retry waits about this long
  maxDelayMs: 30_000, // no retry waits longer
  factor: 2, // each failed attempt multiplies the delay
  jitter: 0.5, // a delay is shortened by a random part of it, up to this fraction
  maxAttempts: Infinity, // consecutive failed attempts before giving up
});

/** [minimum, maximum] of each numeric option. */
const RANGES = {
  initialDelayMs: [0, Infinity],
  maxDelayMs: [0, Infinity],
  factor: [1, Infinity],
  jitter: [0, 1],
  maxAttempts: [1, Infinity],
  timesliceMs: [1, Infinity],
  videoBitsPerSecond: [1, Infinity],
  restartDelayMs: [0, Infinity],
  maxPendingMessages: [1, Infinity],
};

/**
 * Validates `given` against `defaults` and returns the merged options.
 * Unknown names and values of the wrong type or range raise a TypeError / RangeError
 * naming the option and the value.
 * @template {Record<string, unknown>} T
 * @param {unknown} given
 * @param {T} defaults
 * @returns {T}
 */
function options(given, defaults) {
  if (given === undefined) return { ...defaults };
  if (given === null || typeof given !== "object" || Array.isArray(given)) {
    throw new TypeError(`spoc-client: options must be an object, got ${show(given)}`);
  }
  /** @type {Record<string, unknown>} */
  const merged = { ...defaults };
  for (const [name, value] of Object.entries(given)) {
    if (!(name in defaults)) throw new TypeError(`spoc-client: unknown option ${name}`);
    const expected = typeof defaults[name];
    if (typeof value !== expected || (expected === "number" && Number.isNaN(value))) {
      throw new TypeError(`spoc-client: option ${name} must be a ${expected}, got ${show(value)}`);
    }
    const range = /** @type {Record<string, number[]>} */ (RANGES)[name];
    if (range && (/** @type {number} */ (value) < range[0] || /** @type {number} */ (value) > range[1])) {
      throw new RangeError(`spoc-client: option ${name} must be in [${range[0]}, ${range[1]}], got ${value}`);
    }
    merged[name] = value;
  }
  if (/** @type {number} */ (merged.initialDelayMs) > /** @type {number} */ (merged.maxDelayMs)) {
    throw new RangeError(
      `spoc-client: option initialDelayMs (${merged.initialDelayMs}) exceeds maxDelayMs (${merged.maxDelayMs})`,
    );
  }
  return /** @type {T} */ (merged);
}

/** @param {unknown} value */
function show(value) {
  if (typeof value === "string") return JSON.stringify(value.slice(0, 40));
  if (value === null || typeof value !== "object") return String(value);
  return Array.isArray(value) ? "an array" : "an object";
}

/**
 * The delay before reconnection attempt number `attempt` (0 for the first retry):
 * `min(maxDelayMs, initialDelayMs * factor ** attempt)`, shortened by up to `jitter` of
 * itself at random, so that clients dropped together do not come back together.
 * @param {number} attempt
 * @param {{initialDelayMs: number, maxDelayMs: number, factor: number, jitter: number}} [opts]
 * @param {() => number} [random] a number in [0, 1)
 * @returns {number}
 */
export function backoffDelay(attempt, opts = RECONNECT_DEFAULTS, random = Math.random) {
  const capped = Math.min(opts.maxDelayMs, opts.initialDelayMs * opts.factor ** attempt);
  return capped * (1 - opts.jitter * random());
}

/**
 * The absolute ws:// or wss:// URL of `path`, resolved against the page (wss:// when the
 * page came over HTTPS); ws(s):// URLs stay as they are. Anything else: TypeError.
 * @param {string} path
 * @returns {string}
 */
export function wsUrl(path) {
  let url;
  try {
    url = new URL(path, location.href);
  } catch {
    throw new TypeError(`spoc-client: url is not a valid URL, got ${show(path)}`);
  }
  if (url.protocol === "http:" || url.protocol === "https:") {
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  } else if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`spoc-client: url is not a WebSocket URL, got ${show(path)}`);
  }
  return url.href;
}

/**
 * @param {EventTarget} target
 * @param {string} type
 * @param {unknown} detail
 */
function emit(target, type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}

// ---------------------------------------------------------------------------------------
// The reconnecting socket

/**
 * A WebSocket that reconnects until close() is called. An attempt counts as failed until
 * the server's first message arrives (both protocols greet: `welcome`, `publishing`,
 * `viewing`); after `maxAttempts` failed attempts in a row the socket gives up.
 *
 * Events: "open", "message" ({data}), "close" ({code, reason, retryInMs}: retryInMs is
 * null when it will not reconnect).
 */
export class ReconnectingSocket extends EventTarget {
  /**
   * @param {string | ((attempt: number) => string | Promise<string>)} url a path or URL, or
   *   a function giving one for each attempt (for a fresh token, say)
   * @param {Partial<typeof RECONNECT_DEFAULTS>} [opts]
   */
  constructor(url, opts) {
    super();
    if (typeof url !== "string" && typeof url !== "function") {
      throw new TypeError(`spoc-client: url must be a string or a function, got ${show(url)}`);
    }
    if (typeof url === "string") wsUrl(url); // a malformed URL throws here, not later
    this.url = url;
    this.options = options(opts, RECONNECT_DEFAULTS);
    /** @type {"idle" | "connecting" | "open" | "waiting" | "closed"} */
    this.state = "idle";
    /** consecutive attempts that did not reach the server's first message */
    this.failures = 0;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._timer = null;
    this._greeted = false;
    this._generation = 0; // bumped by close(): an attempt of an older generation stops
  }

  /** Starts connecting (again, after close()). */
  connect() {
    if (this.state === "connecting" || this.state === "open" || this.state === "waiting") return this;
    this.failures = 0;
    this._open();
    return this;
  }

  async _open() {
    const generation = this._generation;
    this.state = "connecting";
    this._greeted = false;
    let ws;
    try {
      const url = wsUrl(typeof this.url === "string" ? this.url : await this.url(this.failures));
      if (generation !== this._generation) return; // closed meanwhile
      ws = new WebSocket(url);
    } catch (err) {
      if (generation !== this._generation) return;
      this._retry(1006, `no connection: ${err instanceof Error ? err.message : err}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.state = "open";
      emit(this, "open", {});
    };
    ws.onmessage = (e) => {
      if (!this._greeted) {
        this._greeted = true;
        this.failures = 0;
      }
      emit(this, "message", { data: e.data });
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._retry(e.code, e.reason);
    };
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  _retry(code, reason) {
    if (!this._greeted) this.failures += 1;
    if (this.failures >= this.options.maxAttempts) {
      this.state = "closed";
      emit(this, "close", { code, reason, retryInMs: null });
      return;
    }
    const delay = backoffDelay(this._greeted ? 0 : this.failures - 1, this.options);
    this.state = "waiting";
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
    emit(this, "close", { code, reason, retryInMs: delay });
  }

  /**
   * Sends a text or binary message; false when not connected.
   * @param {string | ArrayBufferLike | ArrayBufferView | Blob} data
   */
  send(data) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(data);
    return true;
  }

  /**
   * Closes for good (until connect()): no reconnection.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = "") {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
    this._generation += 1;
    const ws = this.ws;
    this.ws = null;
    const was = this.state;
    this.state = "closed";
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code, reason);
    if (was !== "closed" && was !== "idle") emit(this, "close", { code, reason, retryInMs: null });
  }
}

/**
 * Forwards a socket's "open" and "close" events to `target`, and its messages, parsed
 * when they are text, to `onText` (JSON) and `onBinary` (bytes).
 * @param {ReconnectingSocket} socket
 * @param {EventTarget} target
 * @param {(event: any) => void} onText
 * @param {(bytes: Uint8Array) => void} [onBinary]
 */
function wire(socket, target, onText, onBinary) {
  socket.addEventListener("open", () => emit(target, "open", {}));
  socket.addEventListener("close", (e) => emit(target, "close", /** @type {CustomEvent} */ (e).detail));
  socket.addEventListener("message", (e) => {
    const data = /** @type {CustomEvent} */ (e).detail.data;
    if (typeof data !== "string") {
      if (onBinary) onBinary(new Uint8Array(data));
      return;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      event = null;
    }
    if (event === null || typeof event !== "object" || typeof event.type !== "string") {
      emit(target, "error", { code: "bad_server_message", message: `not a JSON event: ${show(data)}` });
      return;
    }
    onText(event);
  });
}

/**
 * Emits a server event of one of `types` as it is, its fields (but `type`) as the detail.
 * @param {EventTarget} target
 * @param {any} ev
 * @param {string[]} types
 */
function relay(target, ev, types) {
  if (!types.includes(ev.type)) return;
  const { type, ...detail } = ev;
  emit(target, type, detail);
}

// ---------------------------------------------------------------------------------------
// Chat

/** Chat options: the reconnection options, and the live messages kept while paging. */
export const CHAT_DEFAULTS = Object.freeze({
  ...RECONNECT_DEFAULTS,
  maxPendingMessages: 1000, // live messages of one room held while its history is paged
});

/**
 * What the client knows of one room it is in (or wants to be in, while disconnected).
 */
export class Room {
  /** @param {string} name */
  constructor(name) {
    this.name = name;
    /** true between the server's `joined` and a `left` or a disconnection */
    this.joined = false;
    /** the members, kept current from `joined`, `presence` and `members` */
    this.members = new Set();
    /** @type {number | null} the id of the last message delivered; sent as `since` */
    this.lastId = null;
    /** true while history pages are asked for */
    this.paging = false;
    /** @type {any[]} live messages held while paging */
    this.pending = [];
    /** @type {{ref: string, message: Record<string, unknown>} | null} the join or history request not answered yet */
    this.request = null;
  }
}

/**
 * A client of the chat protocol (docs/chat-protocol.rst).
 *
 * Events (CustomEvent, the payload in `detail`): "open", "close", "welcome" ({user}),
 * "joined" ({room, members, resumed}), "message" ({room, message, replay}),
 * "synced" ({room}), "gap" ({room}), "presence" ({room, user, event, members}),
 * "members" ({room, members}), "left" ({room}), "notification" ({payload}),
 * "error" ({code, message, ref}).
 */
export class ChatClient extends EventTarget {
  /**
   * @param {string | ((attempt: number) => string | Promise<string>)} url
   * @param {Partial<typeof CHAT_DEFAULTS>} [opts]
   */
  constructor(url, opts) {
    super();
    const { maxPendingMessages, ...reconnect } = options(opts, CHAT_DEFAULTS);
    this.maxPendingMessages = maxPendingMessages;
    this.socket = new ReconnectingSocket(url, reconnect);
    /** @type {string | null} the user id the server gave this connection */
    this.user = null;
    /** @type {Map<string, Room>} the rooms joined, or to join on (re)connection */
    this.rooms = new Map();
    this._refs = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._resend = null; // resending rate-limited requests
    this._limited = 0; // rate-limited resends in a row
    wire(this.socket, this, (event) => this._handle(event));
    this.addEventListener("close", () => {
      if (this._resend !== null) clearTimeout(this._resend);
      this._resend = null;
      this._limited = 0;
      this.user = null;
      for (const room of this.rooms.values()) {
        room.joined = false;
        room.paging = false;
        room.pending = [];
        room.request = null;
        room.members.clear();
      }
    });
  }

  /** Connects (and from then on reconnects until close()). */
  connect() {
    this.socket.connect();
    return this;
  }

  /** Closes for good: no reconnection; the rooms are forgotten. */
  close() {
    this.socket.close(1000, "bye");
    this.rooms.clear();
  }

  /**
   * Sends one protocol message (an object); false when not connected.
   * @param {Record<string, unknown>} message
   */
  send(message) {
    return this.socket.send(JSON.stringify(message));
  }

  /**
   * A join or history request for `room`, kept until its answer comes.
   * @param {Room} room
   * @param {Record<string, unknown>} message
   */
  _request(room, message) {
    this._refs += 1;
    const ref = `r-${this._refs}`;
    room.request = { ref, message: { ...message, ref } };
    this.send(room.request.message);
  }

  /**
   * A refused message. `rate_limited` (which names no request: the server refuses before
   * reading) sends every unanswered join and history request again, once, after the
   * reconnection delays, growing until an answer comes; another refusal of a join
   * forgets its room.
   * @param {any} ev
   */
  _refused(ev) {
    if (ev.code === "rate_limited") {
      if (this._resend !== null) return;
      this._resend = setTimeout(() => {
        this._resend = null;
        for (const room of this.rooms.values()) if (room.request) this.send(room.request.message);
      }, backoffDelay(this._limited, this.socket.options));
      this._limited += 1;
      return;
    }
    for (const room of this.rooms.values()) {
      if (!room.request || room.request.ref !== ev.ref) continue;
      if (room.request.message.type === "join" && ev.code !== "already_joined") this.rooms.delete(room.name);
      return;
    }
  }

  /**
   * Enters a room, now or on the next connection; rejoined after every reconnection.
   * @param {string} room
   */
  join(room) {
    if (typeof room !== "string" || !room) throw new TypeError(`spoc-client: room must be a non-empty string, got ${show(room)}`);
    const known = this.rooms.get(room);
    if (known) return known;
    const state = new Room(room);
    this.rooms.set(room, state);
    if (this.user !== null) this._request(state, { type: "join", room });
    return state;
  }

  /**
   * Leaves a room (and stops rejoining it).
   * @param {string} room
   */
  leave(room) {
    if (!this.rooms.delete(room)) return false;
    this.send({ type: "leave", room });
    return true;
  }

  /**
   * Posts to a joined room. Returns the `ref` the message event will carry, or null when
   * the room is not joined right now (nothing is queued: a post is never sent twice).
   * @param {string} room
   * @param {string} text
   * @returns {string | null}
   */
  post(room, text) {
    if (typeof text !== "string") throw new TypeError(`spoc-client: text must be a string, got ${show(text)}`);
    const state = this.rooms.get(room);
    if (!state || !state.joined) return null;
    this._refs += 1;
    const ref = `c-${this._refs}`;
    return this.send({ type: "post", room, text, ref }) ? ref : null;
  }

  /**
   * Asks who is in a joined room (the answer updates the room's members).
   * @param {string} room
   */
  who(room) {
    return this.send({ type: "who", room });
  }

  /** @param {any} ev */
  _handle(ev) {
    const room = typeof ev.room === "string" ? this.rooms.get(ev.room) : undefined;
    switch (ev.type) {
      case "welcome":
        this.user = String(ev.user);
        emit(this, "welcome", { user: this.user });
        for (const r of this.rooms.values()) {
          this._request(r, r.lastId === null ? { type: "join", room: r.name } : { type: "join", room: r.name, since: r.lastId });
        }
        return;
      case "joined":
        if (!room) return;
        this._answered(room);
        room.joined = true;
        room.members = new Set(Array.isArray(ev.members) ? ev.members : []);
        emit(this, "joined", { room: room.name, members: [...room.members], resumed: room.lastId !== null });
        this._page(room, ev);
        return;
      case "history":
        if (!room) return;
        this._answered(room);
        this._page(room, ev);
        return;
      case "message":
        if (room) this._live(room, ev);
        return;
      case "presence":
        if (!room) return;
        if (ev.event === "joined") room.members.add(ev.user);
        else room.members.delete(ev.user);
        emit(this, "presence", { room: room.name, user: ev.user, event: ev.event, members: [...room.members] });
        return;
      case "members":
        if (!room) return;
        room.members = new Set(Array.isArray(ev.members) ? ev.members : []);
        emit(this, "members", { room: room.name, members: [...room.members] });
        return;
      case "left":
        emit(this, "left", { room: ev.room });
        return;
      case "notification":
        emit(this, "notification", { payload: ev.payload });
        return;
      case "error":
        this._refused(ev);
        emit(this, "error", { code: ev.code, message: ev.message, ref: ev.ref });
        return;
    }
  }

  /** @param {Room} room */
  _answered(room) {
    room.request = null;
    this._limited = 0;
  }

  /**
   * One page of history (in `joined` or `history`): new messages delivered in order, the
   * next page asked for while `more`, then the live messages held meanwhile.
   * @param {Room} room
   * @param {any} ev
   */
  _page(room, ev) {
    const page = Array.isArray(ev.history) ? ev.history : [];
    if (ev.complete === false) {
      // lost: too old for the room, or the room was freed (its ids start again)
      room.lastId = null;
      emit(this, "gap", { room: room.name });
    }
    for (const message of page) this._deliver(room, message, true);
    // an empty room seen whole: a resume asks for everything after id 0
    if (room.lastId === null && ev.complete !== false && !ev.more) room.lastId = 0;
    if (ev.more === true && page.length) {
      room.paging = true;
      this._request(room, { type: "history", room: room.name, since: page[page.length - 1].id });
      return;
    }
    room.paging = false;
    const held = room.pending.sort((a, b) => a.id - b.id);
    room.pending = [];
    for (const message of held) this._live(room, message);
    emit(this, "synced", { room: room.name });
  }

  /**
   * A live message: delivered, or held while history pages are asked for (a page that
   * comes later may hold older messages).
   * @param {Room} room
   * @param {any} message
   */
  _live(room, message) {
    if (!room.joined) return;
    if (room.paging) {
      if (room.pending.length >= this.maxPendingMessages) room.pending.shift(); // the history has it
      room.pending.push(message);
      return;
    }
    this._deliver(room, message, false);
  }

  /**
   * @param {Room} room
   * @param {any} message
   * @param {boolean} replay
   */
  _deliver(room, message, replay) {
    if (typeof message.id !== "number") return;
    if (room.lastId !== null && message.id <= room.lastId) return; // already delivered
    room.lastId = message.id;
    emit(this, "message", { room: room.name, message, replay });
  }
}

// ---------------------------------------------------------------------------------------
// Stream

/** The kind byte in front of every media message (docs/stream-protocol.rst). */
export const KIND = Object.freeze({ INIT: 0, KEY: 1, DELTA: 2 });

/**
 * One media message: the kind byte, then the bytes.
 * @param {number} kind
 * @param {Uint8Array} bytes
 * @returns {Uint8Array}
 */
export function frameChunk(kind, bytes) {
  if (kind !== KIND.INIT && kind !== KIND.KEY && kind !== KIND.DELTA) {
    throw new RangeError(`spoc-client: kind must be 0, 1 or 2, got ${show(kind)}`);
  }
  const message = new Uint8Array(bytes.length + 1);
  message[0] = kind;
  message.set(bytes, 1);
  return message;
}

/**
 * @param {Uint8Array} bytes
 * @param {string} text
 */
function containsAscii(bytes, text) {
  outer: for (let i = 0; i + text.length <= bytes.length; i++) {
    for (let j = 0; j < text.length; j++) {
      if (bytes[i + j] !== text.charCodeAt(j)) continue outer;
    }
    return true;
  }
  return false;
}

/**
 * The MediaSource type of a WebM init segment, from the codec ids in its header
 * (MediaSource needs the codecs before the first append).
 * @param {Uint8Array} init
 * @returns {string}
 */
export function webmMimeType(init) {
  const head = init.subarray(0, 8192);
  const codecs = [];
  if (containsAscii(head, "V_VP9")) codecs.push("vp9");
  else if (containsAscii(head, "V_AV1")) codecs.push("av01.0.04M.08");
  else if (containsAscii(head, "V_VP8")) codecs.push("vp8");
  if (containsAscii(head, "A_OPUS")) codecs.push("opus");
  if (!codecs.length) codecs.push("vp8");
  return `video/webm; codecs="${codecs.join(",")}"`;
}

/** Publisher options: the reconnection options and the recording's. */
export const PUBLISHER_DEFAULTS = Object.freeze({
  ...RECONNECT_DEFAULTS,
  mimeType: "", // "" picks the first of vp8, vp9, plain WebM that the browser records
  timesliceMs: 200, // one chunk per this many milliseconds
  videoBitsPerSecond: 1_000_000,
  restartOnViewerJoin: true, // a new recording (a fresh init segment) when a viewer joins
  restartDelayMs: 250, // viewers joining within this delay share one restart
});

/**
 * Publishes a MediaStream: MediaRecorder chunks, the first of each recording as INIT,
 * every later one as KEY (a page cannot see where key frames are; a viewer that joins
 * mid-recording gets a new recording when restartOnViewerJoin is on). Each connection
 * (and reconnection) starts a new recording, so the server always has a fresh INIT.
 *
 * Events: "open", "close", "publishing" ({stream}), "viewer" ({event, id, viewers}),
 * "chunk" ({kind, size}), "restart" ({restarts}), "signal" ({from, data}),
 * "stats" (the server's counters), "error" ({code, message}).
 */
export class StreamPublisher extends EventTarget {
  /**
   * @param {string | ((attempt: number) => string | Promise<string>)} url the stream's
   *   path with `?role=publish`, e.g. "/stream/demo?role=publish"
   * @param {Partial<typeof PUBLISHER_DEFAULTS>} [opts]
   */
  constructor(url, opts) {
    super();
    const { mimeType, timesliceMs, videoBitsPerSecond, restartOnViewerJoin, restartDelayMs, ...reconnect } =
      options(opts, PUBLISHER_DEFAULTS);
    this.recording = { mimeType, timesliceMs, videoBitsPerSecond, restartOnViewerJoin, restartDelayMs };
    this.socket = new ReconnectingSocket(url, reconnect);
    /** @type {MediaStream | null} */
    this.media = null;
    /** @type {MediaRecorder | null} */
    this.recorder = null;
    this.mimeType = "";
    this.viewers = 0;
    this.chunks = 0;
    this.bytes = 0;
    this.restarts = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._restartTimer = null;
    this._chain = Promise.resolve(); // keeps chunks in order while their bytes are read
    wire(this.socket, this, (ev) => this._handle(ev));
    this.addEventListener("close", () => {
      this._stopRecorder();
      this.viewers = 0;
    });
  }

  /**
   * Connects and publishes `media` (recorded once the server says `publishing`).
   * @param {MediaStream} media
   */
  start(media) {
    if (typeof MediaRecorder === "undefined") throw new Error("spoc-client: this browser has no MediaRecorder");
    this.media = media;
    this.mimeType = this.recording.mimeType || pickRecorderType();
    this.socket.connect();
    return this;
  }

  /** Stops recording and closes for good (the MediaStream's tracks are the caller's). */
  stop() {
    this._stopRecorder();
    this.socket.close(1000, "publisher stopped");
    this.media = null;
  }

  /**
   * Sends signalling data to one viewer.
   * @param {number} to
   * @param {unknown} data
   */
  signal(to, data) {
    return this.socket.send(JSON.stringify({ type: "signal", to, data }));
  }

  /** Asks for the stream's counters (answered by a "stats" event). */
  requestStats() {
    return this.socket.send(JSON.stringify({ type: "stats" }));
  }

  /** @param {any} ev */
  _handle(ev) {
    switch (ev.type) {
      case "publishing":
        this.viewers = 0;
        this._startRecorder();
        emit(this, "publishing", { stream: ev.stream });
        return;
      case "viewer":
        this.viewers = Math.max(0, this.viewers + (ev.event === "joined" ? 1 : -1));
        if (ev.event === "joined" && this.recording.restartOnViewerJoin) this._scheduleRestart();
        emit(this, "viewer", { event: ev.event, id: ev.id, viewers: this.viewers });
        return;
      default:
        relay(this, ev, ["signal", "stats", "error"]);
    }
  }

  _startRecorder() {
    const media = this.media;
    if (!media) return;
    this._stopRecorder();
    /** @type {MediaRecorderOptions & {videoKeyFrameIntervalDuration?: number}} */
    const recorderOptions = { videoBitsPerSecond: this.recording.videoBitsPerSecond, videoKeyFrameIntervalDuration: 2000 };
    if (this.mimeType) recorderOptions.mimeType = this.mimeType;
    const recorder = new MediaRecorder(media, recorderOptions);
    let first = true;
    recorder.ondataavailable = (e) => {
      if (!e.data || !e.data.size) return;
      const kind = first ? KIND.INIT : KIND.KEY;
      first = false;
      const blob = e.data;
      this._chain = this._chain.then(async () => {
        const message = frameChunk(kind, new Uint8Array(await blob.arrayBuffer()));
        if (!this.socket.send(message)) return;
        this.chunks += 1;
        this.bytes += message.length;
        emit(this, "chunk", { kind, size: message.length });
      });
    };
    recorder.onerror = (e) => {
      const name = /** @type {any} */ (e).error ? /** @type {any} */ (e).error.name : "unknown";
      emit(this, "error", { code: "recorder", message: `recorder error: ${name}` });
      this.stop();
    };
    recorder.start(this.recording.timesliceMs);
    this.recorder = recorder;
  }

  _scheduleRestart() {
    if (this._restartTimer !== null) return;
    this._restartTimer = setTimeout(() => {
      this._restartTimer = null;
      const old = this.recorder;
      if (!old || old.state === "inactive") return;
      old.onstop = () => {
        if (this.recorder !== old) return;
        this.recorder = null;
        this.restarts += 1;
        this._startRecorder();
        emit(this, "restart", { restarts: this.restarts });
      };
      old.stop(); // its last chunk ends the old recording; the next one starts with INIT
    }, this.recording.restartDelayMs);
  }

  _stopRecorder() {
    if (this._restartTimer !== null) clearTimeout(this._restartTimer);
    this._restartTimer = null;
    const recorder = this.recorder;
    this.recorder = null;
    if (recorder && recorder.state !== "inactive") {
      recorder.ondataavailable = null;
      recorder.onstop = null;
      recorder.stop();
    }
  }
}

/** The first WebM type this browser's MediaRecorder supports, or "" (its default). */
export function pickRecorderType() {
  const candidates = ["video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm"];
  return candidates.find((t) => MediaRecorder.isTypeSupported(t)) || "";
}

/** Viewer options: the reconnection options. */
export const VIEWER_DEFAULTS = RECONNECT_DEFAULTS;

/**
 * Plays a stream in a <video> through MediaSource: each INIT starts a new MediaSource
 * (the publisher began a new recording), media before the first INIT is skipped, and the
 * playback stays near the live edge. Reconnects after the stream ends or the connection
 * drops, to wait for the next publisher.
 *
 * Events: "open", "close", "viewing" ({stream, live, id}), "ended" ({stream}),
 * "recording" ({mimeType, recordings}), "media" ({kind, size}), "dropped" ({dropped}),
 * "resumed" ({dropped}), "signal" ({from, data}), "stats", "error" ({code, message}).
 */
export class StreamViewer extends EventTarget {
  /**
   * @param {string | ((attempt: number) => string | Promise<string>)} url the stream's path
   * @param {HTMLVideoElement} video
   * @param {Partial<typeof VIEWER_DEFAULTS>} [opts]
   */
  constructor(url, video, opts) {
    super();
    if (typeof HTMLVideoElement === "undefined" || !(video instanceof HTMLVideoElement)) {
      throw new TypeError(`spoc-client: video must be a <video> element, got ${show(video)}`);
    }
    this.socket = new ReconnectingSocket(url, opts);
    this.video = video;
    this.chunks = 0;
    this.bytes = 0;
    this.recordings = 0;
    /** @type {string | null} why the current recording cannot play, or null */
    this.error = null;
    /** @type {MediaSource | null} */
    this._source = null;
    /** @type {SourceBuffer | null} */
    this._buffer = null;
    /** @type {Uint8Array[]} */
    this._queue = [];
    wire(this.socket, this, (ev) => this._handle(ev), (bytes) => this._media(bytes));
  }

  /** Connects (and reconnects until close()). */
  connect() {
    this.socket.connect();
    return this;
  }

  /** Stops watching and empties the video. */
  close() {
    this.socket.close(1000, "viewer stopped");
    this._teardown();
  }

  /**
   * Sends signalling data to the publisher.
   * @param {unknown} data
   */
  signal(data) {
    return this.socket.send(JSON.stringify({ type: "signal", data }));
  }

  /** @param {any} ev */
  _handle(ev) {
    relay(this, ev, ["viewing", "ended", "dropped", "resumed", "signal", "stats", "error"]);
  }

  /** @param {Uint8Array} bytes */
  _media(bytes) {
    if (!bytes.length) return;
    this.chunks += 1;
    this.bytes += bytes.length;
    const kind = bytes[0];
    const payload = bytes.subarray(1); // the kind byte is the relay's, not the media's
    if (kind === KIND.INIT) this._newRecording(payload);
    else if (this._source) {
      this._queue.push(payload);
      this._pump();
    }
    emit(this, "media", { kind, size: bytes.length });
  }

  _teardown() {
    this._buffer = null;
    this._queue = [];
    if (this._source) {
      this._source = null;
      this.video.removeAttribute("src");
      this.video.load();
    }
  }

  /** @param {Uint8Array} init */
  _newRecording(init) {
    this._teardown();
    this.error = null;
    this.recordings += 1;
    const mimeType = webmMimeType(init);
    if (typeof MediaSource === "undefined" || !MediaSource.isTypeSupported(mimeType)) {
      this._fail(`this browser cannot play ${mimeType} through MediaSource`);
      return;
    }
    const source = new MediaSource();
    this._source = source;
    this._queue = [init]; // the init segment first, always
    const url = URL.createObjectURL(source);
    source.addEventListener(
      "sourceopen",
      () => {
        URL.revokeObjectURL(url);
        if (this._source !== source) return;
        const buffer = source.addSourceBuffer(mimeType);
        buffer.mode = "sequence";
        buffer.addEventListener("updateend", () => {
          if (this._buffer !== buffer) return;
          this._keepLive(buffer);
          this._pump();
        });
        this._buffer = buffer;
        this._pump();
      },
      { once: true },
    );
    this.video.src = url;
    emit(this, "recording", { mimeType, recordings: this.recordings });
  }

  /** @param {string} message */
  _fail(message) {
    this.error = message;
    this._queue = [];
    emit(this, "error", { code: "playback", message });
  }

  /** @param {SourceBuffer} buffer */
  _keepLive(buffer) {
    const video = this.video;
    const ranges = buffer.buffered;
    if (!ranges.length) return;
    const end = ranges.end(ranges.length - 1);
    if (end - video.currentTime > 3) video.currentTime = Math.max(0, end - 0.5); // fell behind
    if (video.paused) video.play().catch(() => {});
    const start = ranges.start(0);
    if (!buffer.updating && video.currentTime - start > 30) buffer.remove(start, video.currentTime - 10);
  }

  _pump() {
    const buffer = this._buffer;
    if (!buffer || buffer.updating || !this._queue.length || !this._source || this._source.readyState !== "open") return;
    try {
      buffer.appendBuffer(/** @type {BufferSource} */ (this._queue.shift()));
    } catch (err) {
      this._fail(`cannot append media: ${err instanceof Error ? err.name : err} (waiting for a new recording)`);
    }
  }
}
