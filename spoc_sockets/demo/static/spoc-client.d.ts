// Types of spoc-client.js, the browser client for the spoc_sockets chat and stream
// protocols (docs/browser-client.rst).

/** A path or URL, or a function giving one for each connection attempt (a fresh token, say). */
export type UrlSource = string | ((attempt: number) => string | Promise<string>);

export interface ReconnectOptions {
  /** The first retry waits about this long (500 ms). */
  initialDelayMs: number;
  /** No retry waits longer (30 000 ms). */
  maxDelayMs: number;
  /** Each failed attempt multiplies the delay (2, at least 1). */
  factor: number;
  /** A delay is shortened by a random part of it, up to this fraction (0.5, in [0, 1]). */
  jitter: number;
  /** Consecutive attempts without the server's greeting before giving up (Infinity). */
  maxAttempts: number;
}

export interface ChatOptions extends ReconnectOptions {
  /** Live messages of one room held while its history is paged (1000). */
  maxPendingMessages: number;
}

export interface PublisherOptions extends ReconnectOptions {
  /** The MediaRecorder type; "" picks the first WebM type the browser records. */
  mimeType: string;
  /** One chunk per this many milliseconds (200). */
  timesliceMs: number;
  /** The recorder's video bit rate (1 000 000). */
  videoBitsPerSecond: number;
  /** Start a new recording (a fresh init segment) when a viewer joins (true). */
  restartOnViewerJoin: boolean;
  /** Viewers joining within this delay share one restart (250 ms). */
  restartDelayMs: number;
}

export type ViewerOptions = ReconnectOptions;

export declare const RECONNECT_DEFAULTS: Readonly<ReconnectOptions>;
export declare const CHAT_DEFAULTS: Readonly<ChatOptions>;
export declare const PUBLISHER_DEFAULTS: Readonly<PublisherOptions>;
export declare const VIEWER_DEFAULTS: Readonly<ViewerOptions>;

/** The delay before retry number `attempt` (0 first), capped, with jitter. */
export declare function backoffDelay(
  attempt: number,
  options?: Pick<ReconnectOptions, "initialDelayMs" | "maxDelayMs" | "factor" | "jitter">,
  random?: () => number,
): number;

/** An absolute ws:// or wss:// URL for a path on the page's own server. */
export declare function wsUrl(path: string): string;

/** Delivered as the `detail` of a "close" event; `retryInMs` is null when it will not reconnect. */
export interface CloseDetail {
  code: number;
  reason: string;
  retryInMs: number | null;
}

/** An error the server sent, or a client-side one ("bad_server_message", "recorder", "playback"). */
export interface ErrorDetail {
  code: string;
  message?: string;
  ref?: string | number;
  [field: string]: unknown;
}

/** An EventTarget whose listeners receive CustomEvents typed by an event map. */
declare class TypedEventTarget<M> extends EventTarget {
  addEventListener<K extends keyof M & string>(
    type: K,
    listener: (event: CustomEvent<M[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof M & string>(
    type: K,
    listener: (event: CustomEvent<M[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export interface SocketEvents {
  open: Record<string, never>;
  message: { data: string | ArrayBuffer };
  close: CloseDetail;
}

/** A WebSocket that reconnects (capped exponential backoff with jitter) until close(). */
export declare class ReconnectingSocket extends TypedEventTarget<SocketEvents> {
  constructor(url: UrlSource, options?: Partial<ReconnectOptions>);
  readonly url: UrlSource;
  readonly options: ReconnectOptions;
  readonly state: "idle" | "connecting" | "open" | "waiting" | "closed";
  /** Consecutive attempts that did not reach the server's first message. */
  readonly failures: number;
  readonly ws: WebSocket | null;
  connect(): this;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): boolean;
  close(code?: number, reason?: string): void;
}

// -- chat -------------------------------------------------------------------------------

/** A room message, as the server sends it. */
export interface ChatMessage {
  type: "message";
  room: string;
  /** Assigned by the server, increasing by one per room. */
  id: number;
  /** The server's time, seconds since the epoch. */
  ts: number;
  user: string;
  text: string;
  ref?: string | number;
}

export interface ChatEvents {
  open: Record<string, never>;
  close: CloseDetail;
  welcome: { user: string };
  /** `resumed`: the join carried `since` (a reconnection). */
  joined: { room: string; members: string[]; resumed: boolean };
  /** Each message of a room once, in id order; `replay` for history. */
  message: { room: string; message: ChatMessage; replay: boolean };
  /** The history a join asked for has all arrived (every page). */
  synced: { room: string };
  /** The server no longer had some messages after the last one this client saw. */
  gap: { room: string };
  presence: { room: string; user: string; event: "joined" | "left"; members: string[] };
  members: { room: string; members: string[] };
  left: { room: string };
  notification: { payload: unknown };
  error: ErrorDetail;
}

/** What the client knows of a room it is in, or will rejoin. */
export declare class Room {
  constructor(name: string);
  readonly name: string;
  /** True between the server's `joined` and a `left` or a disconnection. */
  readonly joined: boolean;
  /** Kept current from `joined`, `presence` and `members`. */
  readonly members: Set<string>;
  /** The id of the last message delivered (0: the room was seen empty), sent as `since` on rejoin. */
  readonly lastId: number | null;
  /** True while history pages are being asked for. */
  readonly paging: boolean;
}

/** A client of the chat protocol: rooms rejoined with `since`, history paged, presence kept. */
export declare class ChatClient extends TypedEventTarget<ChatEvents> {
  constructor(url: UrlSource, options?: Partial<ChatOptions>);
  readonly socket: ReconnectingSocket;
  /** The user id the server gave the current connection (null while disconnected). */
  readonly user: string | null;
  /** The rooms joined, or to join on the next connection. */
  readonly rooms: ReadonlyMap<string, Room>;
  connect(): this;
  /** Closes for good: no reconnection; the rooms are forgotten. */
  close(): void;
  /** Enters a room now or on the next connection, and after every reconnection. */
  join(room: string): Room;
  leave(room: string): boolean;
  /** The ref the message will carry, or null when the room is not joined right now. */
  post(room: string, text: string): string | null;
  who(room: string): boolean;
  /** Sends one protocol message; false when not connected. */
  send(message: Record<string, unknown>): boolean;
}

// -- stream -----------------------------------------------------------------------------

/** The kind byte in front of every media message. */
export declare const KIND: Readonly<{ INIT: 0; KEY: 1; DELTA: 2 }>;
export type Kind = 0 | 1 | 2;

/** One media message: the kind byte, then the bytes. */
export declare function frameChunk(kind: Kind, bytes: Uint8Array): Uint8Array;
/** The MediaSource type of a WebM init segment (from its codec ids). */
export declare function webmMimeType(init: Uint8Array): string;
/** The first WebM type this browser's MediaRecorder supports, or "". */
export declare function pickRecorderType(): string;

export interface StreamStats {
  type: "stats";
  viewers: number;
  bytes_in: number;
  bytes_out: number;
  drops: number;
}

export interface PublisherEvents {
  open: Record<string, never>;
  close: CloseDetail;
  publishing: { stream: string };
  viewer: { event: "joined" | "left"; id: number; viewers: number };
  chunk: { kind: Kind; size: number };
  restart: { restarts: number };
  signal: { from: number | "publisher"; data: unknown };
  stats: Omit<StreamStats, "type">;
  error: ErrorDetail;
}

/** Publishes a MediaStream: MediaRecorder chunks, INIT first in each recording. */
export declare class StreamPublisher extends TypedEventTarget<PublisherEvents> {
  constructor(url: UrlSource, options?: Partial<PublisherOptions>);
  readonly socket: ReconnectingSocket;
  /** The recording options; changes apply from the next viewer or recording. */
  recording: Omit<PublisherOptions, keyof ReconnectOptions>;
  readonly media: MediaStream | null;
  readonly recorder: MediaRecorder | null;
  /** The type recorded ("" for the browser's default). */
  readonly mimeType: string;
  readonly viewers: number;
  readonly chunks: number;
  readonly bytes: number;
  readonly restarts: number;
  start(media: MediaStream): this;
  stop(): void;
  signal(to: number, data: unknown): boolean;
  requestStats(): boolean;
}

export interface ViewerEvents {
  open: Record<string, never>;
  close: CloseDetail;
  viewing: { stream: string; live: boolean; id: number };
  ended: { stream: string };
  recording: { mimeType: string; recordings: number };
  media: { kind: number; size: number };
  dropped: { dropped: number };
  resumed: { dropped: number };
  signal: { from: number | "publisher"; data: unknown };
  stats: Omit<StreamStats, "type">;
  error: ErrorDetail;
}

/** Plays a stream in a video element through MediaSource, the init segment first. */
export declare class StreamViewer extends TypedEventTarget<ViewerEvents> {
  constructor(url: UrlSource, video: HTMLVideoElement, options?: Partial<ViewerOptions>);
  readonly socket: ReconnectingSocket;
  readonly video: HTMLVideoElement;
  readonly chunks: number;
  readonly bytes: number;
  readonly recordings: number;
  /** Why the current recording cannot play, or null. */
  readonly error: string | null;
  connect(): this;
  close(): void;
  signal(data: unknown): boolean;
}

export {};
