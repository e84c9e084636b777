// Node's `ws` server under the benchmark's contract (see servers.py): /echo sends every
// message back, /broadcast sends every message to every /broadcast client (the sender
// included); no compression, no keepalive. Prints its port; SIGTERM stops it.
"use strict";
const { WebSocketServer } = require("ws");

const MAX_MESSAGE = 64 * 1024 * 1024;
const listeners = new Set();
const server = new WebSocketServer({
  host: "127.0.0.1",
  port: 0,
  backlog: 1024,
  perMessageDeflate: false,
  maxPayload: MAX_MESSAGE,
});

server.on("connection", (ws, request) => {
  if (request.url === "/echo") {
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else if (request.url === "/broadcast") {
    listeners.add(ws);
    ws.on("message", (data, isBinary) => {
      for (const peer of listeners) peer.send(data, { binary: isBinary });
    });
    ws.on("close", () => listeners.delete(ws));
  } else {
    ws.close(1008, "unknown path");
  }
});
server.on("listening", () => console.log(server.address().port));
process.on("SIGTERM", () => process.exit(0));
