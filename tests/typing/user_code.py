"""Application code written the way the docs say: ``mypy --strict`` must accept it.

``scripts/test`` type-checks this file; ``tests/test_typing.py`` also runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router
from spoc_sockets.testing import TestClient

router = Router()


@dataclass(frozen=True)
class User:
    name: str


@router.channel("/notifications", max_message_size=2**16, origins=("https://app.example",))
class Notifications(ChannelServer[User]):
    ping_interval = 30.0

    async def authenticate(self, request: Request) -> User:
        token = request.query.get("token")
        if token is None:
            raise Reject(401, "invalid token")
        return User(token)

    def on_connect(self, conn: Connection[User]) -> None:
        conn.send_json({"hello": conn.user.name})  # conn.user is a User

    async def on_message(self, conn: Connection[User], message: str | bytes) -> None:
        self.broadcast(message, exclude=conn)

    def notify(self, name: str, text: str) -> None:
        self.broadcast(text, to=[c for c in self.clients if c.user.name == name])


class Echo(ChannelServer):  # no principal type: ChannelServer[object]
    def on_message(self, conn: Connection, message: str | bytes) -> None:
        conn.send(message)


router.add("/echo", Echo(ping_interval=None))
notifications: Notifications = router.get(Notifications)  # the decorated class's instance


def check() -> str | bytes:
    notifications.notify("ada", "hi")
    with TestClient(router) as client, client.connect("/echo") as ws:
        ws.send("hello")
        return ws.receive()
