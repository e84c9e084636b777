"""Prometheus metrics of a router, and a health path (the optional extra ``prometheus``).

::

    from spoc_sockets.metrics import add_metrics
    add_metrics(router)          # GET /metrics (Prometheus text format), GET /healthz

The metrics are read from :meth:`Router.stats <spoc_sockets.Router.stats>` at each
scrape, on the server's own port, by the router's plain HTTP routes; nothing is counted
twice. Every series has a ``channel`` label (the path as registered; ``""`` for
handshakes refused before a channel was found).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .request import Request
from .router import Response, Router
from .stats import RouterStats

__all__ = ["add_metrics"]


def add_metrics(router: Router, path: str = "/metrics", *, health: str | None = "/healthz") -> None:
    """Serve ``router``'s metrics at ``path`` and ``200 ok`` at ``health`` (``None``: no
    health path). Needs ``prometheus_client`` (``pip install spoc-sockets[prometheus]``)."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ImportError(
            "add_metrics needs prometheus_client: pip install 'spoc-sockets[prometheus]'"
        ) from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(router))

    def metrics(request: Request) -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    router.add_http(path, metrics)
    if health is not None:
        router.add_http(health, lambda request: Response(200, "ok\n"))


#: (metric name, help, ChannelStats attribute) of the per-channel counters.
_COUNTERS = (
    ("spoc_handshakes_accepted", "Handshakes accepted.", "accepted"),
    ("spoc_messages_received", "Messages received from clients.", "messages_in"),
    ("spoc_received_bytes", "Payload bytes received from clients.", "bytes_in"),
    ("spoc_messages_sent", "Messages queued for clients.", "messages_out"),
    ("spoc_sent_bytes", "Payload bytes queued for clients.", "bytes_out"),
    ("spoc_messages_dropped", "Messages dropped by the 'drop' overflow policy.", "dropped"),
)


class _Collector:
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats: RouterStats = self.router.stats()
        open_now = GaugeMetricFamily("spoc_connections", "Open connections.", labels=["channel"])
        refused = CounterMetricFamily(
            "spoc_handshakes_refused", "Handshakes refused, by HTTP status.",
            labels=["channel", "status"],
        )  # fmt: skip
        closed = CounterMetricFamily(
            "spoc_connections_closed", "Connections finished, by close code.",
            labels=["channel", "code"],
        )  # fmt: skip
        counters = [CounterMetricFamily(n, h, labels=["channel"]) for n, h, _ in _COUNTERS]
        for channel, snapshot in stats.channels.items():
            open_now.add_metric([channel], snapshot.connections)
            for family, (_, _, attribute) in zip(counters, _COUNTERS, strict=True):
                family.add_metric([channel], getattr(snapshot, attribute))
            for status, count in snapshot.refused.items():
                refused.add_metric([channel, str(status)], count)
            for code, count in snapshot.closed.items():
                closed.add_metric([channel, str(code)], count)
        for status, count in stats.unrouted_refused.items():
            refused.add_metric(["", str(status)], count)
        yield open_now
        yield refused
        yield closed
        yield from counters
