"""The chat and the stream on Redis, as a server process serves them: ``spoc-sockets
serve tests.redis.chatapp:router`` with ``SPOC_TEST_REDIS_URL`` set (and, optionally,
``SPOC_TEST_PRESENCE_TTL`` in seconds). Both channels share one broker."""

from __future__ import annotations

import os

from spoc_sockets import Router
from spoc_sockets.channels.brokers.redis import RedisBroker
from spoc_sockets.channels.chat import create_chat_server
from spoc_sockets.channels.stream import StreamServer
from spoc_sockets.request import Request


class OpenStream(StreamServer):
    """Anyone may publish (a test)."""

    def can_publish(self, request: Request, stream_id: str, user: object) -> bool:
        return True


broker = RedisBroker(
    os.environ["SPOC_TEST_REDIS_URL"],
    presence_ttl=float(os.environ.get("SPOC_TEST_PRESENCE_TTL", "30")),
    timeout=2.0,
)
router = Router()
router.add(
    "/chat",
    create_chat_server(broker=broker, trust_user_param=True, rate=1000.0, burst=1000.0),
)
router.add("/stream/{stream_id}", OpenStream(broker=broker))
