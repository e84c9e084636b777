// The spoc_sockets demo page: a chat room on /chat and a live stream on /stream/demo.
// Plain browser JavaScript: no build step, no dependency.
"use strict";

const $ = (id) => document.getElementById(id);

function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  return scheme + location.host + path;
}

function setStatus(el, text, kind) {
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

function kib(bytes) {
  return (bytes / 1024).toFixed(0) + " KiB";
}

// ---------------------------------------------------------------------------------------
// Chat: the ChatServer JSON protocol (join, leave, post, who → welcome, joined, presence,
// message, left, members, error).

const ROOM = "lobby";
const chat = { ws: null, pending: false, user: null, joined: false, members: new Set(), seen: new Set() };

function chatUi() {
  const connected = chat.ws !== null;
  $("name").disabled = connected;
  $("join").disabled = connected;
  $("leave").disabled = !connected;
  $("text").disabled = !chat.joined;
  $("post").disabled = !chat.joined;
}

function addLine(build) {
  const list = $("messages");
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const li = document.createElement("li");
  build(li);
  list.appendChild(li);
  if (stick) list.scrollTop = list.scrollHeight;
}

function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

function addMessage(msg) {
  addLine((li) => {
    li.className = "message";
    const when = msg.ts ? new Date(msg.ts * 1000).toLocaleTimeString() : "";
    li.append(span("time", when), span("user", msg.user), span("text", msg.text));
  });
}

function addEvent(text, cls = "event") {
  addLine((li) => li.appendChild(span(cls, text)));
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  for (const name of [...chat.members].sort()) {
    const li = document.createElement("li");
    li.textContent = name;
    list.appendChild(li);
  }
}

// History comes in pages (joined, then history replies while "more" is true): the page
// asks for the next one after the last id it got, and skips ids it already shows.
function addHistory(ev) {
  const page = ev.history || [];
  for (const msg of page) {
    if (!chat.seen.has(msg.id)) addMessage(msg);
    chat.seen.add(msg.id);
  }
  if (!ev.complete) addEvent("some older messages are no longer kept");
  if (ev.more && page.length) chatSend({ type: "history", room: ev.room, since: page[page.length - 1].id });
}

function chatSend(obj) {
  if (chat.ws && chat.ws.readyState === WebSocket.OPEN) chat.ws.send(JSON.stringify(obj));
}

function onChatEvent(ev) {
  switch (ev.type) {
    case "welcome":
      chat.user = ev.user;
      chatSend({ type: "join", room: ROOM });
      break;
    case "joined":
      chat.joined = true;
      $("messages").replaceChildren();
      chat.seen = new Set();
      addHistory(ev);
      chat.members = new Set(ev.members || []);
      renderMembers();
      addEvent(`you joined ${ev.room} as ${chat.user}`);
      setStatus($("chat-status"), `in ${ev.room} as ${chat.user}`, "ok");
      chatUi();
      $("text").focus();
      break;
    case "presence":
      if (ev.event === "joined") chat.members.add(ev.user);
      else chat.members.delete(ev.user);
      renderMembers();
      if (ev.user !== chat.user) addEvent(`${ev.user} ${ev.event === "joined" ? "joined" : "left"}`);
      break;
    case "history":
      addHistory(ev);
      break;
    case "message":
      if (!chat.seen.has(ev.id)) addMessage(ev);
      chat.seen.add(ev.id);
      break;
    case "members":
      chat.members = new Set(ev.members || []);
      renderMembers();
      break;
    case "left":
      chat.joined = false;
      chatUi();
      break;
    case "notification":
      addEvent(`notification: ${JSON.stringify(ev.payload)}`);
      break;
    case "error":
      addEvent(`error (${ev.code}): ${ev.message}`, "error");
      break;
  }
}

// The server names the user: /token answers the name asked for plus a random suffix,
// signed, and the chat trusts only that token (never a name the page would claim).
async function joinChat(name) {
  if (chat.ws || chat.pending) return;
  chat.pending = true;
  setStatus($("chat-status"), "connecting…");
  let issued;
  try {
    const response = await fetch("/token?name=" + encodeURIComponent(name), { cache: "no-store" });
    if (!response.ok) throw new Error((await response.text()).trim());
    issued = await response.json();
  } catch (err) {
    setStatus($("chat-status"), `refused: ${err.message}`, "bad");
    return;
  } finally {
    chat.pending = false;
  }
  const ws = new WebSocket(wsUrl("/chat?token=" + encodeURIComponent(issued.token)));
  chat.ws = ws;
  chatUi();
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onChatEvent(JSON.parse(e.data));
  };
  ws.onclose = (e) => {
    if (chat.ws !== ws) return;
    chat.ws = null;
    chat.joined = false;
    chat.members.clear();
    renderMembers();
    const why = e.code === 1000 ? "left" : `disconnected (close ${e.code}${e.reason ? ": " + e.reason : ""})`;
    setStatus($("chat-status"), why, e.code === 1000 ? "" : "bad");
    chatUi();
  };
}

$("name").value = "visitor" + Math.floor(1000 + Math.random() * 9000);

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (name) joinChat(name);
});

$("leave").addEventListener("click", () => {
  if (chat.ws) chat.ws.close(1000, "bye");
});

$("post-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text.trim() || !chat.joined) return;
  chatSend({ type: "post", room: ROOM, text });
  $("text").value = "";
});

// ---------------------------------------------------------------------------------------
// Stream: MediaRecorder chunks, each prefixed with a kind byte (0 = init segment, 1 = key,
// 2 = delta). MediaRecorder's first chunk holds the WebM header (kind 0); the page cannot
// tell where key frames are, so every later chunk is sent as kind 1. A viewer that joins
// after the first chunk gets the init segment but media from the middle of the recording,
// which a decoder may refuse: so the publisher restarts its recording (a fresh init
// segment) when a viewer joins, unless that box is unchecked.

const KIND_INIT = 0;
const KIND_KEY = 1;
const STREAM_PATH = "/stream/demo";
const TIMESLICE_MS = 200;

const pub = {
  ws: null,
  media: null, // the MediaStream recorded
  recorder: null,
  mime: "",
  chain: Promise.resolve(), // keeps chunks in order while their bytes are read
  chunks: 0,
  bytes: 0,
  viewers: 0,
  restarts: 0,
  restartTimer: null,
  animation: null,
};

function pickMime() {
  const candidates = ["video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm"];
  return candidates.find((t) => MediaRecorder.isTypeSupported(t)) || "";
}

function publishUi(active) {
  $("publish-canvas").disabled = active;
  $("publish-camera").disabled = active;
  $("stop-publish").disabled = !active;
}

function publishStatus(text, kind) {
  setStatus($("publish-status"), text, kind);
}

function showPublishStats() {
  publishStatus(
    `publishing (${pub.mime || "default format"}): ${pub.chunks} chunks, ${kib(pub.bytes)}, ` +
      `${pub.viewers} viewer${pub.viewers === 1 ? "" : "s"}` +
      (pub.restarts ? `, ${pub.restarts} restart${pub.restarts === 1 ? "" : "s"}` : ""),
    "ok",
  );
}

function startAnimation() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const t0 = performance.now();
  let frame = 0;
  const draw = () => {
    const t = (performance.now() - t0) / 1000;
    frame += 1;
    const bg = ctx.createLinearGradient(0, 0, w, h);
    bg.addColorStop(0, `hsl(${(t * 20) % 360}, 55%, 22%)`);
    bg.addColorStop(1, `hsl(${(t * 20 + 120) % 360}, 55%, 12%)`);
    ctx.fillStyle = bg;
    ctx.fillRect(0, 0, w, h);
    for (let i = 0; i < 6; i++) {
      const a = t * (0.6 + i * 0.15) + (i * Math.PI) / 3;
      ctx.fillStyle = `hsla(${(i * 60 + t * 40) % 360}, 80%, 60%, .85)`;
      ctx.beginPath();
      ctx.arc(w / 2 + Math.cos(a) * (80 + i * 18), h / 2 + Math.sin(a * 1.3) * (60 + i * 8), 14 + i * 3, 0, 2 * Math.PI);
      ctx.fill();
    }
    const x = ((t * 160) % (w + 80)) - 40;
    ctx.fillStyle = "#fff";
    ctx.fillRect(x, h - 36, 40, 16);
    ctx.font = "bold 28px system-ui, sans-serif";
    ctx.fillText("spoc_sockets live", 20, 44);
    ctx.font = "18px ui-monospace, monospace";
    ctx.fillText(`${new Date().toLocaleTimeString()}   t=${t.toFixed(2)}s   frame ${frame}`, 20, 74);
  };
  draw();
  pub.animation = setInterval(draw, 1000 / 30);
}

function startRecorder() {
  const ws = pub.ws;
  if (!ws || !pub.media) return;
  const options = { videoBitsPerSecond: 1_000_000, videoKeyFrameIntervalDuration: 2000 };
  if (pub.mime) options.mimeType = pub.mime;
  const recorder = new MediaRecorder(pub.media, options);
  let first = true;
  recorder.ondataavailable = (e) => {
    if (!e.data || !e.data.size) return;
    const kind = first ? KIND_INIT : KIND_KEY;
    first = false;
    const blob = e.data;
    pub.chain = pub.chain.then(async () => {
      const body = new Uint8Array(await blob.arrayBuffer());
      const message = new Uint8Array(body.length + 1);
      message[0] = kind;
      message.set(body, 1);
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(message);
      pub.chunks += 1;
      pub.bytes += message.length;
      showPublishStats();
    });
  };
  recorder.onerror = (e) => stopPublish(`recorder error: ${e.error ? e.error.name : "unknown"}`, "bad");
  recorder.start(TIMESLICE_MS);
  pub.recorder = recorder;
}

function restartRecorder() {
  // a viewer joined: a new recording starts with a new init segment every viewer can use
  if (pub.restartTimer !== null) return;
  pub.restartTimer = setTimeout(() => {
    pub.restartTimer = null;
    const old = pub.recorder;
    if (!old || old.state === "inactive") return;
    pub.recorder = null;
    old.onstop = () => {
      if (pub.ws && !pub.recorder) {
        pub.restarts += 1;
        startRecorder();
      }
    };
    old.stop(); // its last chunk ends the old recording; the next one starts with kind 0
  }, 250);
}

async function startPublish(source) {
  if (pub.ws) return;
  if (!window.MediaRecorder) {
    publishStatus("this browser has no MediaRecorder", "bad");
    return;
  }
  publishUi(true);
  try {
    if (source === "camera") {
      pub.media = await navigator.mediaDevices.getUserMedia({
        video: { width: 640, height: 360 },
        audio: false,
      });
      const preview = $("preview");
      preview.srcObject = pub.media;
      preview.hidden = false;
      preview.play().catch(() => {});
    } else {
      startAnimation();
      $("canvas").hidden = false;
      pub.media = $("canvas").captureStream(30);
    }
  } catch (err) {
    cleanupPublish();
    publishStatus(`cannot capture the ${source}: ${err.message || err.name}`, "bad");
    return;
  }
  $("publish-placeholder").hidden = true;
  pub.mime = pickMime();
  pub.chunks = pub.bytes = pub.viewers = pub.restarts = 0;
  publishStatus("connecting…");
  const ws = new WebSocket(wsUrl(STREAM_PATH + "?role=publish"));
  ws.binaryType = "arraybuffer";
  pub.ws = ws;
  let opened = false;
  ws.onopen = () => {
    opened = true;
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    const ev = JSON.parse(e.data);
    if (ev.type === "publishing") {
      startRecorder();
      showPublishStats();
    } else if (ev.type === "viewer") {
      pub.viewers = Math.max(0, pub.viewers + (ev.event === "joined" ? 1 : -1));
      if (ev.event === "joined" && $("restart-on-join").checked) restartRecorder();
      showPublishStats();
    }
  };
  ws.onclose = (e) => {
    if (pub.ws !== ws) return;
    const why = opened
      ? `connection closed (${e.code}${e.reason ? ": " + e.reason : ""})`
      : "the server refused to publish (is someone else publishing this stream?)";
    stopPublish(why, "bad");
  };
}

function cleanupPublish() {
  if (pub.restartTimer !== null) clearTimeout(pub.restartTimer);
  pub.restartTimer = null;
  if (pub.recorder && pub.recorder.state !== "inactive") {
    pub.recorder.ondataavailable = null;
    pub.recorder.onstop = null;
    pub.recorder.stop();
  }
  pub.recorder = null;
  if (pub.media) for (const track of pub.media.getTracks()) track.stop();
  pub.media = null;
  if (pub.animation !== null) clearInterval(pub.animation);
  pub.animation = null;
  $("canvas").hidden = true;
  const preview = $("preview");
  preview.srcObject = null;
  preview.hidden = true;
  $("publish-placeholder").hidden = false;
  publishUi(false);
}

function stopPublish(text = "stopped", kind = "") {
  const ws = pub.ws;
  pub.ws = null;
  cleanupPublish();
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, "publisher stopped");
  publishStatus(text, kind);
}

$("publish-canvas").addEventListener("click", () => startPublish("canvas"));
$("publish-camera").addEventListener("click", () => startPublish("camera"));
$("stop-publish").addEventListener("click", () => stopPublish());

// Watch: MediaSource + one SourceBuffer in "sequence" mode. Each init segment (kind 0)
// starts a new MediaSource: the publisher began a new recording.

const view = {
  ws: null,
  want: false, // reconnect after the stream ended, until Stop
  retry: null,
  source: null,
  buffer: null,
  queue: [],
  chunks: 0,
  bytes: 0,
  recordings: 0,
  error: null,
};

function watchStatus(text, kind) {
  setStatus($("watch-status"), text, kind);
}

function showWatchStats() {
  if (view.error) return;
  const video = $("viewer");
  watchStatus(
    `watching: ${view.chunks} chunks, ${kib(view.bytes)}, t=${video.currentTime.toFixed(1)}s` +
      (view.recordings > 1 ? `, recording ${view.recordings}` : ""),
    "ok",
  );
}

function findAscii(bytes, text) {
  outer: for (let i = 0; i + text.length <= bytes.length; i++) {
    for (let j = 0; j < text.length; j++) {
      if (bytes[i + j] !== text.charCodeAt(j)) continue outer;
    }
    return true;
  }
  return false;
}

function mimeOf(init) {
  // the codec ids of the WebM header's Tracks (MediaSource needs the codecs up front)
  const head = init.subarray(0, 8192);
  const codecs = [];
  if (findAscii(head, "V_VP9")) codecs.push("vp9");
  else if (findAscii(head, "V_AV1")) codecs.push("av01.0.04M.08");
  else if (findAscii(head, "V_VP8")) codecs.push("vp8");
  if (findAscii(head, "A_OPUS")) codecs.push("opus");
  if (!codecs.length) codecs.push("vp8");
  return `video/webm; codecs="${codecs.join(",")}"`;
}

function teardownMedia() {
  const video = $("viewer");
  view.buffer = null;
  view.queue = [];
  if (view.source) {
    view.source = null;
    video.removeAttribute("src");
    video.load();
  }
}

function newRecording(init) {
  teardownMedia();
  view.error = null;
  view.recordings += 1;
  const mime = mimeOf(init);
  if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
    view.error = `this browser cannot play ${mime} through MediaSource`;
    watchStatus(view.error, "bad");
    return;
  }
  const video = $("viewer");
  const source = new MediaSource();
  view.source = source;
  view.queue = [init];
  const url = URL.createObjectURL(source);
  source.addEventListener(
    "sourceopen",
    () => {
      URL.revokeObjectURL(url);
      if (view.source !== source) return;
      const buffer = source.addSourceBuffer(mime);
      buffer.mode = "sequence";
      buffer.addEventListener("updateend", () => {
        if (view.buffer !== buffer) return;
        keepLive(buffer);
        pump();
      });
      view.buffer = buffer;
      pump();
    },
    { once: true },
  );
  video.src = url;
}

function keepLive(buffer) {
  const video = $("viewer");
  const ranges = buffer.buffered;
  if (!ranges.length) return;
  const end = ranges.end(ranges.length - 1);
  if (end - video.currentTime > 3) video.currentTime = Math.max(0, end - 0.5); // fell behind
  if (video.paused) video.play().catch(() => {});
  const start = ranges.start(0);
  if (!buffer.updating && video.currentTime - start > 30) buffer.remove(start, video.currentTime - 10);
}

function pump() {
  const buffer = view.buffer;
  if (!buffer || buffer.updating || !view.queue.length || view.source.readyState !== "open") return;
  try {
    buffer.appendBuffer(view.queue.shift());
  } catch (err) {
    view.error = `cannot append media: ${err.name}`;
    watchStatus(view.error + " (waiting for a new recording)", "bad");
    view.queue = [];
  }
}

function onMedia(bytes) {
  if (!bytes.length) return;
  view.chunks += 1;
  view.bytes += bytes.length;
  const kind = bytes[0];
  const payload = bytes.subarray(1); // the kind byte is the relay's, not the media's
  if (kind === KIND_INIT) {
    newRecording(payload);
  } else if (view.source) {
    view.queue.push(payload);
    pump();
  }
  showWatchStats();
}

function connectViewer() {
  view.retry = null;
  const ws = new WebSocket(wsUrl(STREAM_PATH));
  ws.binaryType = "arraybuffer";
  view.ws = ws;
  watchStatus("connecting…");
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") {
      onMedia(new Uint8Array(e.data));
      return;
    }
    const ev = JSON.parse(e.data);
    if (ev.type === "viewing") {
      watchStatus(ev.live ? "connected: waiting for media" : "connected: waiting for a publisher");
    } else if (ev.type === "ended") {
      watchStatus("the stream ended: waiting for the next publisher");
    } else if (ev.type === "dropped") {
      watchStatus(`too slow: ${ev.dropped} chunks dropped`, "bad");
    }
  };
  ws.onclose = (e) => {
    if (view.ws !== ws) return;
    view.ws = null;
    if (!view.want) return;
    if (e.code !== 4000) watchStatus(`disconnected (close ${e.code}): retrying`, "bad");
    view.retry = setTimeout(connectViewer, 1000);
  };
}

function startWatch() {
  if (view.want) return;
  view.want = true;
  view.chunks = view.bytes = view.recordings = 0;
  $("watch").disabled = true;
  $("stop-watch").disabled = false;
  connectViewer();
}

function stopWatch() {
  view.want = false;
  if (view.retry !== null) clearTimeout(view.retry);
  view.retry = null;
  const ws = view.ws;
  view.ws = null;
  if (ws) ws.close(1000, "viewer stopped");
  teardownMedia();
  $("watch").disabled = false;
  $("stop-watch").disabled = true;
  watchStatus("idle");
}

$("watch").addEventListener("click", startWatch);
$("stop-watch").addEventListener("click", stopWatch);
$("viewer").addEventListener("timeupdate", showWatchStats);

window.demo = { chat, pub, view }; // for the console (and tests)
