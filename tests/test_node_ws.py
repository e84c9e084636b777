"""Interoperability with Node's ``ws`` client (installed from the npm registry here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from spoc_sockets import ChannelServer, Connection, Router

from .behaviour.harness_net import NetServer
from .behaviour.harness_threads import start as start_threads
from .behaviour.harness_trio import start as start_trio

CLIENT = r"""
const WebSocket = require("ws");
const ws = new WebSocket(process.argv[2], ["chat.v1"]);
const seen = [];
ws.on("open", () => {
  ws.send("héllo");
  ws.send(Buffer.alloc(70000, 7));
  ws.send("close please");
});
ws.on("message", (data, isBinary) => {
  seen.push(isBinary ? {binary: data.length, sum: data.reduce((a, b) => a + b, 0)}
                     : {text: data.toString()});
});
ws.on("close", (code, reason) => {
  console.log(JSON.stringify({protocol: ws.protocol, seen, code, reason: reason.toString()}));
});
ws.on("error", (err) => { console.error(err); process.exit(1); });
"""


class Echo(ChannelServer):
    subprotocols = ("chat.v1",)

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        if message == "close please":
            conn.close(4321, "bye from python")
        else:
            conn.send(message)


@pytest.fixture(scope="module")
def node_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "the interoperability test needs node and npm on PATH"
    folder = tmp_path_factory.mktemp("node-ws")
    subprocess.run(
        [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "ws@8"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    script = folder / "client.js"
    script.write_text(CLIENT)
    return script


Start = Callable[[Router], AbstractContextManager[NetServer]]


@pytest.mark.parametrize("start", [start_threads, start_trio], ids=["threads", "trio"])
def test_node_ws_client_talks_to_every_adapter(node_ws: Path, start: Start) -> None:
    router = Router()
    router.add("/echo", Echo())
    with start(router) as server:
        result = subprocess.run(
            ["node", str(node_ws), f"ws://127.0.0.1:{server.port}/echo"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=node_ws.parent,
        )
    report = json.loads(result.stdout)
    assert report == {
        "protocol": "chat.v1",
        "seen": [{"text": "héllo"}, {"binary": 70000, "sum": 7 * 70000}],
        "code": 4321,
        "reason": "bye from python",
    }
    assert not router.upgraded
