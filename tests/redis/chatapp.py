"""The chat on Redis, as a server process serves it: ``spoc-sockets serve
tests.redis.chatapp:router`` with ``SPOC_TEST_REDIS_URL`` set."""

from __future__ import annotations

import os

from spoc_sockets import Router
from spoc_sockets.channels.brokers.redis import RedisBroker
from spoc_sockets.channels.chat import create_chat_server

router = Router()
router.add(
    "/chat",
    create_chat_server(
        broker=RedisBroker(os.environ["SPOC_TEST_REDIS_URL"], timeout=2.0),
        trust_user_param=True,
        rate=1000.0,
        burst=1000.0,
    ),
)
