"""The FastAPI example with the channels mounted under ``/ws`` (``docs/fastapi.rst``).

``wss://.../ws/notifications`` is the ``/notifications`` channel of
``examples/fastapi_app.py``; FastAPI keeps every other path. Run it with
``uvicorn examples.fastapi_mount:app --ws spoc_sockets.uvicorn:WSProtocol``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from examples.fastapi_app import Notifications
from spoc_sockets import Router
from spoc_sockets.asgi import ASGIApp

router = Router()
notifications = router.add("/notifications", Notifications())
realtime = ASGIApp(router)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await realtime.shutdown()  # a mounted app gets no lifespan events of its own


app = FastAPI(title="spoc_sockets mounted in FastAPI", lifespan=lifespan)


@app.post("/users/{user}/notify")
async def notify(user: str, payload: dict[str, Any]) -> dict[str, int]:
    return {"delivered": notifications.notify(user, payload)}


app.mount("/ws", realtime)  # the channels answer below /ws: the router sees the rest
