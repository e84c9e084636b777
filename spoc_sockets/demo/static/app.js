// The spoc_sockets demo page: a chat room on /chat and a live stream on /stream/demo,
// built on the package's browser client (spoc-client.js). No build step, no dependency.
import { ChatClient, StreamPublisher, StreamViewer } from "/spoc-client.js";

const $ = (id) => document.getElementById(id);

function setStatus(el, text, kind) {
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

function kib(bytes) {
  return (bytes / 1024).toFixed(0) + " KiB";
}

function seconds(ms) {
  return (ms / 1000).toFixed(1) + " s";
}

// ---------------------------------------------------------------------------------------
// Chat: a ChatClient in the room "lobby". It reconnects by itself, rejoins with `since`
// and delivers each message once, in order, so the page only draws what it is given.

const ROOM = "lobby";
let chat = null; // the ChatClient, while the page is in the chat
let pending = false; // asking /token

function chatUi() {
  const room = chat && chat.rooms.get(ROOM);
  const joined = Boolean(room && room.joined);
  $("name").disabled = chat !== null || pending;
  $("join").disabled = chat !== null || pending;
  $("leave").disabled = chat === null;
  $("text").disabled = !joined;
  $("post").disabled = !joined;
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

function renderMembers(members) {
  const list = $("members");
  list.replaceChildren();
  for (const name of [...members].sort()) {
    const li = document.createElement("li");
    li.textContent = name;
    list.appendChild(li);
  }
}

// The server names the user: /token answers the name asked for plus a random suffix,
// signed, and the chat trusts only that token (never a name the page would claim).
async function fetchToken(name) {
  const response = await fetch("/token?name=" + encodeURIComponent(name), { cache: "no-store" });
  if (!response.ok) throw new Error((await response.text()).trim());
  return (await response.json()).token;
}

function newChat(name, firstToken) {
  let token = firstToken;
  // A reconnection keeps the token (and so the user); an attempt that failed may have
  // met a restarted server, whose secret is new: then the page asks for a new token.
  const client = new ChatClient(async (attempt) => {
    if (attempt > 0) token = await fetchToken(name);
    return "/chat?token=" + encodeURIComponent(token);
  });
  client.addEventListener("joined", (e) => {
    if (!e.detail.resumed) $("messages").replaceChildren();
    renderMembers(e.detail.members);
    addEvent(e.detail.resumed ? `reconnected to ${e.detail.room}` : `you joined ${e.detail.room} as ${client.user}`);
    setStatus($("chat-status"), `in ${e.detail.room} as ${client.user}`, "ok");
    chatUi();
    $("text").focus();
  });
  client.addEventListener("message", (e) => addMessage(e.detail.message));
  client.addEventListener("gap", () => addEvent("some older messages are no longer kept"));
  client.addEventListener("presence", (e) => {
    renderMembers(e.detail.members);
    if (e.detail.user !== client.user) addEvent(`${e.detail.user} ${e.detail.event === "joined" ? "joined" : "left"}`);
  });
  client.addEventListener("members", (e) => renderMembers(e.detail.members));
  client.addEventListener("notification", (e) => addEvent(`notification: ${JSON.stringify(e.detail.payload)}`));
  client.addEventListener("error", (e) => addEvent(`error (${e.detail.code}): ${e.detail.message}`, "error"));
  client.addEventListener("close", (e) => {
    const { code, reason, retryInMs } = e.detail;
    renderMembers([]);
    if (retryInMs === null) {
      if (chat === client) chat = null;
      setStatus($("chat-status"), code === 1000 ? "left" : `disconnected (close ${code}${reason ? ": " + reason : ""})`, code === 1000 ? "" : "bad");
    } else {
      setStatus($("chat-status"), `disconnected (close ${code}): reconnecting in ${seconds(retryInMs)}`, "bad");
    }
    chatUi();
  });
  return client;
}

async function joinChat(name) {
  if (chat || pending) return;
  pending = true;
  chatUi();
  setStatus($("chat-status"), "connecting…");
  let token;
  try {
    token = await fetchToken(name);
  } catch (err) {
    setStatus($("chat-status"), `refused: ${err.message}`, "bad");
    return;
  } finally {
    pending = false;
    chatUi();
  }
  chat = newChat(name, token);
  chat.join(ROOM);
  chat.connect();
  chatUi();
}

$("name").value = "visitor" + Math.floor(1000 + Math.random() * 9000);

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (name) joinChat(name);
});

$("leave").addEventListener("click", () => {
  if (chat) chat.close();
});

$("post-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text.trim() || !chat) return;
  if (chat.post(ROOM, text) !== null) $("text").value = "";
});

// ---------------------------------------------------------------------------------------
// Stream: a StreamPublisher records the canvas or the camera (each chunk prefixed with
// its kind byte: 0 = init segment, 1 = key), restarting its recording when a viewer
// joins unless that box is unchecked; a StreamViewer plays /stream/demo in the video.

const STREAM_PATH = "/stream/demo";

let pub = null; // the last StreamPublisher
let publishing = false;
let animation = null;

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
    `publishing (${pub.mimeType || "default format"}): ${pub.chunks} chunks, ${kib(pub.bytes)}, ` +
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
  animation = setInterval(draw, 1000 / 30);
}

async function capture(source) {
  if (source === "camera") {
    const media = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: false });
    const preview = $("preview");
    preview.srcObject = media;
    preview.hidden = false;
    preview.play().catch(() => {});
    return media;
  }
  startAnimation();
  $("canvas").hidden = false;
  return $("canvas").captureStream(30);
}

async function startPublish(source) {
  if (publishing) return;
  if (!window.MediaRecorder) {
    publishStatus("this browser has no MediaRecorder", "bad");
    return;
  }
  publishing = true;
  publishUi(true);
  let media;
  try {
    media = await capture(source);
  } catch (err) {
    cleanupPublish(null);
    publishStatus(`cannot capture the ${source}: ${err.message || err.name}`, "bad");
    return;
  }
  $("publish-placeholder").hidden = true;
  publishStatus("connecting…");
  // a refused publisher (someone else publishes) gives up after three attempts
  const publisher = new StreamPublisher(STREAM_PATH + "?role=publish", {
    maxAttempts: 3,
    restartOnViewerJoin: $("restart-on-join").checked,
  });
  pub = publisher;
  let published = false;
  $("restart-on-join").onchange = (e) => {
    publisher.recording.restartOnViewerJoin = e.target.checked;
  };
  publisher.addEventListener("publishing", () => {
    published = true;
    showPublishStats();
  });
  for (const type of ["chunk", "viewer", "restart"]) publisher.addEventListener(type, showPublishStats);
  publisher.addEventListener("error", (e) => publishStatus(`error (${e.detail.code}): ${e.detail.message || ""}`, "bad"));
  publisher.addEventListener("close", (e) => {
    const { code, reason, retryInMs } = e.detail;
    if (retryInMs !== null) {
      publishStatus(`connection closed (${code}): reconnecting in ${seconds(retryInMs)}`, "bad");
      return;
    }
    if (pub !== publisher || !publishing) return;
    stopPublish(
      published
        ? `connection closed (${code}${reason ? ": " + reason : ""})`
        : "the server refused to publish (is someone else publishing this stream?)",
      "bad",
    );
  });
  publisher.start(media);
}

function cleanupPublish(media) {
  if (media) for (const track of media.getTracks()) track.stop();
  if (animation !== null) clearInterval(animation);
  animation = null;
  $("canvas").hidden = true;
  const preview = $("preview");
  preview.srcObject = null;
  preview.hidden = true;
  $("publish-placeholder").hidden = false;
  publishing = false;
  publishUi(false);
}

function stopPublish(text = "stopped", kind = "") {
  if (!publishing) return;
  publishing = false;
  const media = pub ? pub.media : null;
  if (pub) pub.stop();
  cleanupPublish(media);
  publishStatus(text, kind);
}

$("publish-canvas").addEventListener("click", () => startPublish("canvas"));
$("publish-camera").addEventListener("click", () => startPublish("camera"));
$("stop-publish").addEventListener("click", () => stopPublish());

let view = null; // the last StreamViewer
let viewEnded = false; // the stream ended (the viewer reconnects: the status says why it waits)

function watchStatus(text, kind) {
  setStatus($("watch-status"), text, kind);
}

function showWatchStats() {
  if (!view || view.error || viewEnded || view.socket.state === "closed") return;
  const video = $("viewer");
  watchStatus(
    `watching: ${view.chunks} chunks, ${kib(view.bytes)}, t=${video.currentTime.toFixed(1)}s` +
      (view.recordings > 1 ? `, recording ${view.recordings}` : ""),
    "ok",
  );
}

function startWatch() {
  if (view && view.socket.state !== "closed") return;
  $("watch").disabled = true;
  $("stop-watch").disabled = false;
  watchStatus("connecting…");
  // after the stream ends the viewer reconnects, to wait for the next publisher
  const viewer = new StreamViewer(STREAM_PATH, $("viewer"), { maxDelayMs: 2000 });
  view = viewer;
  viewEnded = false;
  viewer.addEventListener("viewing", (e) => {
    if (e.detail.live) watchStatus("connected: waiting for media");
    else if (!viewEnded) watchStatus("connected: waiting for a publisher");
  });
  viewer.addEventListener("ended", () => {
    viewEnded = true;
    watchStatus("the stream ended: waiting for the next publisher");
  });
  viewer.addEventListener("recording", () => {
    viewEnded = false;
  });
  viewer.addEventListener("dropped", (e) => watchStatus(`too slow: ${e.detail.dropped} chunks dropped`, "bad"));
  viewer.addEventListener("media", showWatchStats);
  viewer.addEventListener("error", (e) => watchStatus(e.detail.message || e.detail.code, "bad"));
  viewer.addEventListener("close", (e) => {
    if (e.detail.retryInMs !== null && e.detail.code !== 4000) {
      watchStatus(`disconnected (close ${e.detail.code}): retrying`, "bad");
    }
  });
  viewer.connect();
}

function stopWatch() {
  if (view) view.close();
  $("watch").disabled = false;
  $("stop-watch").disabled = true;
  watchStatus("idle");
}

$("watch").addEventListener("click", startWatch);
$("stop-watch").addEventListener("click", stopWatch);
$("viewer").addEventListener("timeupdate", showWatchStats);

// for the console (and tests): the current clients
window.demo = {
  get chat() {
    return chat;
  },
  get pub() {
    return pub;
  },
  get view() {
    return view;
  },
};
