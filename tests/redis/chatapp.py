"""The chat on Redis, as a server process serves it: ``spoc-sockets serve
tests.redis.chatapp:router`` with ``SPOC_TEST_REDIS_URL`` set (and, optionally,
``SPOC_TEST_PRESENCE_TTL`` in seconds)."""

from __future__ import annotations

import os

from spoc_sockets import Router
from spoc_sockets.channels.brokers.redis import RedisBroker
from spoc_sockets.channels.chat import create_chat_server

router = Router()
router.add(
    "/chat",
    create_chat_server(
        broker=RedisBroker(
            os.environ["SPOC_TEST_REDIS_URL"],
            presence_ttl=float(os.environ.get("SPOC_TEST_PRESENCE_TTL", "30")),
            timeout=2.0,
        ),
        trust_user_param=True,
        rate=1000.0,
        burst=1000.0,
    ),
)
