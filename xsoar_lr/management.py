"""
The management site: health, status and Prometheus metrics of the host, on
an endpoint of its own (off unless the configuration has a C{management}
section; loopback by default).

- C{GET /health}: C{200} when the gateway listens and every instance runs
  without reporting a problem; C{503} with the reasons otherwise.
- C{GET /status}: JSON: each instance's integration, port, route, process,
  uptime, restarts, last exit and reported health.
- C{GET /metrics}: the Prometheus text format, from C{prometheus_client}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import ILogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

__all__ = ["HostMetrics", "make_management_site"]

#: Label value for requests that reached no route.
NO_ROUTE = "-"

Snapshot = Callable[[], list[dict[str, Any]]]


class _InstanceCollector:
    """
    Reads the supervisor's view of the instances at each scrape.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Any:
        up = GaugeMetricFamily(
            "xsoar_lr_instance_up",
            "1 while the instance's process is serving, 0 otherwise.",
            labels=["instance", "integration"],
        )
        healthy = GaugeMetricFamily(
            "xsoar_lr_instance_healthy",
            "0 while the instance reports a problem, 1 otherwise.",
            labels=["instance"],
        )
        restarts = CounterMetricFamily(
            "xsoar_lr_instance_restarts",
            "How often the instance's process was restarted.",
            labels=["instance"],
        )
        uptime = GaugeMetricFamily(
            "xsoar_lr_instance_uptime_seconds",
            "Seconds since the instance's process began serving.",
            labels=["instance"],
        )
        for record in self.snapshot():
            name = record["name"]
            up.add_metric([name, record["integration"]], record["state"] == "running")
            healthy.add_metric([name], record.get("health") is None)
            restarts.add_metric([name], record["restarts"])
            uptime.add_metric([name], record.get("uptime") or 0.0)
        return [up, healthy, restarts, uptime]


@implementer(ILogObserver)
class HostMetrics:
    """
    The host's Prometheus metrics.

    Gateway requests are counted as the gateway finishes them
    (L{observe_request}). List builds and feed pulls are counted from log
    events that carry a C{metric} field (C{list_build} with C{entries} and
    C{seconds}; C{feed_pull} with C{feed} and C{result}), whether the host
    logged them or an instance did: add this object as a log observer.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xsoar_lr_gateway_requests",
            "Requests the gateway answered, by instance and status code.",
            ["instance", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xsoar_lr_gateway_upstream_latency_seconds",
            "Seconds from forwarding a request to the instance's response headers.",
            ["instance"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry,
        )
        self.bytes = Counter(
            "xsoar_lr_gateway_response_bytes",
            "Body bytes the gateway sent to clients, by instance.",
            ["instance"],
            registry=self.registry,
        )
        self.list_build = Histogram(
            "xsoar_lr_list_build_seconds",
            "Seconds to build a list, by instance.",
            ["instance"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.list_entries = Gauge(
            "xsoar_lr_list_entries",
            "Entries in the list an instance built last.",
            ["instance"],
            registry=self.registry,
        )
        self.feed_pulls = Counter(
            "xsoar_lr_feed_pulls",
            "Feed pulls, by feed and result.",
            ["feed", "result"],
            registry=self.registry,
        )
        self.registry.register(_InstanceCollector(snapshot))

    def observe_request(
        self,
        instance: str | None,
        code: int,
        sent: int,
        latency: float | None,
    ) -> None:
        """
        Count one request the gateway finished.
        """
        label = instance if instance is not None else NO_ROUTE
        self.requests.labels(label, str(code)).inc()
        self.bytes.labels(label).inc(sent)
        if latency is not None:
            self.latency.labels(label).observe(latency)

    def __call__(self, event: dict[str, Any]) -> None:
        metric = event.get("metric")
        if metric is None:
            return
        fields = {**event, **event.get("child_fields", {})}
        try:
            if metric == "list_build":
                instance = str(event.get("instance", NO_ROUTE))
                self.list_build.labels(instance).observe(float(fields["seconds"]))
                self.list_entries.labels(instance).set(int(fields["entries"]))
            elif metric == "feed_pull":
                self.feed_pulls.labels(str(fields["feed"]), str(fields["result"])).inc()
        except (KeyError, TypeError, ValueError):
            # A malformed event must not break logging; it is simply not
            # counted.
            return

    def exposition(self) -> bytes:
        """
        The metrics in the Prometheus text format.
        """
        text: bytes = generate_latest(self.registry)
        return text


def health_problems(
    snapshot: list[dict[str, Any]], gateway_listening: bool
) -> list[str]:
    """
    Why the host is not healthy; empty when it is.
    """
    problems = [] if gateway_listening else ["The gateway is not listening."]
    for record in snapshot:
        if record["state"] != "running":
            last = f" (last exit: {record['last_exit']})" if record["last_exit"] else ""
            problems.append(f"Instance {record['name']!r} is {record['state']}{last}.")
        elif record.get("health"):
            problems.append(f"Instance {record['name']!r} reports: {record['health']}")
    return problems


def _json(request: Request, code: int, value: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, indent=1).encode() + b"\n"


class _Health(Resource):
    isLeaf = True

    def __init__(self, host: Any) -> None:
        super().__init__()
        self.host = host

    def render_GET(self, request: Request) -> bytes:
        problems = health_problems(
            self.host.status_records(), self.host.gateway.port is not None
        )
        if problems:
            return _json(request, 503, {"status": "unhealthy", "problems": problems})
        return _json(request, 200, {"status": "ok", "problems": []})


class _Status(Resource):
    isLeaf = True

    def __init__(self, host: Any) -> None:
        super().__init__()
        self.host = host

    def render_GET(self, request: Request) -> bytes:
        return _json(
            request,
            200,
            {
                "gateway": {
                    "listen": self.host.config.gateway.listen,
                    "port": self.host.gateway.port,
                },
                "instances": self.host.status_records(),
            },
        )


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, metrics: HostMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.exposition()


def make_management_site(host: Any, metrics: HostMetrics) -> Site:
    """
    The management site of C{host} (a L{xsoar_lr.service.HostService}).
    """
    root = Resource()
    root.putChild(b"health", _Health(host))
    root.putChild(b"status", _Status(host))
    root.putChild(b"metrics", _Metrics(metrics))
    site = Site(root)
    site.noisy = False
    return site
