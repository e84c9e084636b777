"""The demo: a chat room and a live stream on one page, served by ``python -m spoc_sockets``.

``app`` is the application (the router, the page's HTTP routes, the demo's identity);
``server`` runs it from the command line on any adapter; ``static/`` holds the page.
"""

from .app import demo_router
from .server import main

__all__ = ["demo_router", "main"]
