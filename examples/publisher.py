"""Post to a chat room and notify a user from a process that serves no WebSocket: a
Django or Flask view, a task worker, a cron job (``docs/scale-out.rst``).

The chat runs elsewhere, in processes serving
``create_chat_server(broker=RedisBroker(REDIS_URL))``; this process only needs the same
Redis. Run it with ``python -m examples.publisher redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import sys

from spoc_sockets.channels.brokers import BrokerUnavailable
from spoc_sockets.channels.brokers.redis import Publisher

REDIS_URL = "redis://127.0.0.1:6379/0"

#: one per process, made once: it keeps its connections to Redis
publisher = Publisher(REDIS_URL)


def order_shipped(user: str, order: str) -> bool:
    """What a view calls when an order ships: tell the buyer (on whatever process and
    connection they are), and say it in the shop's room. False if Redis did not answer
    (the notification or the post may not have gone out)."""
    try:
        publisher.notify(user, {"event": "shipped", "order": order})
        publisher.post("shop", "shop-bot", f"order {order} is on its way")
    except BrokerUnavailable:
        return False
    return True


if __name__ == "__main__":
    with Publisher(sys.argv[1] if len(sys.argv) > 1 else REDIS_URL) as one_off:
        message_id = one_off.post("lobby", "announcer", "hello from a script")
        print(f"posted to lobby as message {message_id}")
