"""A FastAPI service with a WebSocket channel beside its HTTP routes (``docs/fastapi.rst``).

* ``GET /health`` and ``POST /users/{user}/notify`` are FastAPI routes;
* ``/notifications`` is a spoc_sockets channel: a browser of the site connects with its
  session cookie, and receives what ``POST /users/{user}/notify`` sends to its user.

Run it with ``uvicorn examples.fastapi_app:app --ws spoc_sockets.uvicorn:WSProtocol`` (or
hypercorn); FastAPI serves every HTTP request, the router every WebSocket handshake.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI

from spoc_sockets import ChannelServer, Connection, Reject, Request, Router
from spoc_sockets.asgi import ASGIApp

#: the pages allowed to open the WebSocket (the browser sends the cookie from any page)
ORIGINS = ("http://localhost:8000",)
#: session cookie -> user (a real service asks its session store)
SESSIONS = {"s-ada": "ada", "s-grace": "grace"}

class Notifications(ChannelServer):
    """Each user's open connections, to push them what the HTTP side decides."""

    origins = ORIGINS

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()  # notify() may come from any thread
        self._by_user: dict[str, set[Connection]] = {}

    def authenticate(self, request: Request) -> object:
        user = SESSIONS.get(request.cookies.get("session", ""))
        if user is None:
            raise Reject(401, "log in first")
        return user

    def on_connect(self, conn: Connection) -> None:
        with self._lock:
            self._by_user.setdefault(str(conn.user), set()).add(conn)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        with self._lock:
            connections = self._by_user.get(str(conn.user), set())
            connections.discard(conn)
            if not connections:
                self._by_user.pop(str(conn.user), None)

    def notify(self, user: str, payload: Any) -> int:
        """Send ``payload`` (JSON) to every open connection of ``user``; how many."""
        with self._lock:
            connections = list(self._by_user.get(user, ()))
        for conn in connections:
            conn.send_json({"type": "notification", "payload": payload})
        return len(connections)


router = Router()
notifications = router.add("/notifications", Notifications())  # typed: Notifications

api = FastAPI(title="spoc_sockets with FastAPI")


@api.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "connections": len(router.upgraded)}


@api.post("/users/{user}/notify")
async def notify(user: str, payload: dict[str, Any]) -> dict[str, int]:
    return {"delivered": notifications.notify(user, payload)}


#: the ASGI application: WebSocket handshakes go to the router, HTTP requests to FastAPI
#: (after the router's own HTTP routes, if it has any), lifespan events to both
app = ASGIApp(router, fallback=api)
