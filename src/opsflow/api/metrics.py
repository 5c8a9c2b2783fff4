"""Prometheus metrics of the API: requests by route template, latency histograms, errors.

Each app gets its own registry, so several apps in one process (tests) never clash, and
``GET /metrics`` serves only the API's own series. Labels use the route *template*
(``/runs/{id}``), never the raw path, so ids cannot explode the series count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from opsflow.adapters.token_cache import TokenCache

# Seconds; the API's own work is milliseconds, Temporal starts tens of milliseconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ApiMetrics:
    """The API's metric families, registered in a registry of their own."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        self.requests = Counter(
            "opsflow_api_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "opsflow_api_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "opsflow_api_errors",
            "Requests answered with 5xx or failed with an exception, by route and kind.",
            ["route", "kind"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "opsflow_api_requests_in_flight",
            "Requests being handled now.",
            registry=self.registry,
        )
        self.runs_started = Counter(
            "opsflow_api_runs_started",
            "Runs started through the API, by runbook and outcome (started/existing).",
            ["runbook", "outcome"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "opsflow_api_auth_failures",
            "Requests refused with 401 or 403, by reason.",
            ["reason"],
            registry=self.registry,
        )

    def watch_token_cache(self, cache: TokenCache) -> None:
        """Serve the token cache's figures, read from it at each scrape."""
        self.registry.register(_TokenCacheCollector(cache))


class _TokenCacheCollector:
    """Whether revocations reach the API (``live``), and how often memory answered."""

    def __init__(self, cache: TokenCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        c = self._cache
        yield GaugeMetricFamily(
            "opsflow_api_token_cache_live",
            "1 while the token listener is connected (tokens answered from memory), else 0.",
            value=1 if c.live else 0,
        )
        yield GaugeMetricFamily(
            "opsflow_api_token_cache_entries", "Verified tokens held in memory.", value=c.size
        )
        yield CounterMetricFamily(
            "opsflow_api_token_cache_hits", "Tokens answered from memory.", value=c.hits
        )
        yield CounterMetricFamily(
            "opsflow_api_token_cache_misses", "Tokens read from api_tokens.", value=c.misses
        )
        yield CounterMetricFamily(
            "opsflow_api_token_cache_reconnects",
            "Times the token listener connected again after losing its connection.",
            value=c.reconnects,
        )
