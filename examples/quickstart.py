"""The DESIGN.md example, driven in memory by the TestClient (no network needed)."""

from __future__ import annotations

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router
from spoc_sockets.testing import HandshakeRejected, TestClient

router = Router()
TOKENS = {"t": "ada", "u": "grace"}


@router.channel("/notifications")
class Notifications(ChannelServer):
    def authenticate(self, request: Request) -> object:
        user = TOKENS.get(request.query.get("token", ""))
        if user is None:
            raise Reject(401, "invalid token")
        return user

    def on_connect(self, conn: Connection) -> None:
        print(f"  server: {conn.user} connected")

    def on_message(self, conn: Connection, message: str | bytes) -> None:
        self.broadcast(message)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        print(f"  server: {conn.user} left with {code}")


def main() -> None:
    with TestClient(router) as client:
        with (
            client.connect("/notifications?token=t") as ada,
            client.connect("/notifications?token=u") as grace,
        ):
            ada.send("hello")
            print(f"ada received {ada.receive()!r}, grace received {grace.receive()!r}")
        try:
            client.connect("/notifications?token=nope")
        except HandshakeRejected as refused:
            print(f"a bad token is refused with {refused.status}: {refused.body.decode()}")
    print(f"upgraded connections left: {len(router.upgraded)}")


if __name__ == "__main__":
    main()
