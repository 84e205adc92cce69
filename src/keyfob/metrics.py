"""Prometheus metrics (prometheus-client), counted at the seams that already exist:
``server.KeyfobApp`` (every HTTP answer, by surface), ``gateway/meter.py`` (reservations
held, settlements: cost per model, upstream failures per provider) and
``gateway/routes.py`` (refusals by reason).

Why these seams: each is already on the path, so counting costs a dictionary lookup and
an increment (about a microsecond per call against ~60 us of Keyfob's own work, see
docs/BENCHMARKS.md), and nothing new is awaited. Label values a person chooses (model
and provider names) are bounded: past ``MAX_LABEL_VALUES`` distinct values a metric
counts the rest as ``other``, so a hosted server's metrics cannot grow without end.

Several workers (``keyfob serve --workers N``): ``PROMETHEUS_MULTIPROC_DIR`` makes
prometheus-client share the numbers through files, and ``/metrics`` sums them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double every counter for no use here
REGISTRY = CollectorRegistry(auto_describe=True)
MAX_LABEL_VALUES = 200

#: Seconds, from a local model's few milliseconds to a long stream.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "keyfob_http_requests",
    "HTTP answers by surface and status.",
    ("surface", "status"),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "keyfob_http_request_duration_seconds",
    "Time from the request to the end of its answer (a stream's last byte), by surface.",
    ("surface",),
    buckets=BUCKETS,
    registry=REGISTRY,
)
#: Set when workers share their numbers through files (``keyfob serve --workers N``).
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Held:
    """Reservations held by this process right now: two plain integers, read at scrape
    time (a Gauge's inc and dec take a lock each, about 1 us per call each way). With
    several workers, prometheus-client's file-backed Gauge sums them instead."""

    def __init__(self) -> None:
        self.count = 0
        self.micro_usd = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "keyfob_reservations_held",
            "Gateway calls of this process holding a reservation right now.",
            value=self.count,
        )
        yield GaugeMetricFamily(
            "keyfob_reserved_micro_usd",
            "Money held by this process's calls in flight (integer micro-USD).",
            value=self.micro_usd,
        )


HELD = Held()
if MULTIPROCESS:
    HELD_GAUGE = Gauge(
        "keyfob_reservations_held",
        "Gateway calls holding a reservation right now.",
        registry=REGISTRY,
        multiprocess_mode="livesum",
    )
    HELD_MICRO_USD_GAUGE = Gauge(
        "keyfob_reserved_micro_usd",
        "Money held by calls in flight (integer micro-USD).",
        registry=REGISTRY,
        multiprocess_mode="livesum",
    )
else:
    REGISTRY.register(HELD)  # type: ignore[arg-type]
REFUSALS = Counter(
    "keyfob_refusals",
    "Gateway calls Keyfob refused, by reason (the error code apps see).",
    ("reason",),
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "keyfob_upstream_errors",
    "Upstream calls that failed, by provider name and upstream status (none: no answer).",
    ("provider", "status"),
    registry=REGISTRY,
)
COST = Counter(
    "keyfob_cost_micro_usd",
    "Money settled (integer micro-USD), by model.",
    ("model",),
    registry=REGISTRY,
)
#: Exact paths of the gateway and their surface label.
SURFACES = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "count_tokens",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

_seen: dict[str, set[str]] = {}


def bounded(metric: str, value: str) -> str:
    seen = _seen.setdefault(metric, set())
    if value in seen:
        return value
    if len(seen) >= MAX_LABEL_VALUES:
        return "other"
    seen.add(value)
    return value


def surface_of(path: str) -> str:
    found = SURFACES.get(path)
    if found is not None:
        return found
    if path.startswith("/v1/keyfob/"):
        return "keyfob_api"
    if path.startswith("/v1/"):
        return "gateway_other"
    if path.startswith(("/oauth/", "/.well-known/", "/device")):
        return "oauth"
    if path in PROBES:
        return "probes"
    return "web"


class Observer:
    """Per-surface children resolved once, so an answer costs two increments."""

    __slots__ = ("_counts", "_latency")

    def __init__(self) -> None:
        self._latency: dict[str, object] = {}
        self._counts: dict[tuple[str, int], object] = {}

    def done(self, surface: str, status: int, started: float) -> None:
        hist = self._latency.get(surface)
        if hist is None:
            hist = self._latency[surface] = LATENCY.labels(surface)
        counter = self._counts.get((surface, status))
        if counter is None:
            counter = self._counts[(surface, status)] = REQUESTS.labels(surface, str(status))
        hist.observe(time.perf_counter() - started)  # type: ignore[attr-defined]
        counter.inc()  # type: ignore[attr-defined]


OBSERVE = Observer()


_cost_children: dict[str, Any] = {}


def reservation_held(amount_micro_usd: int) -> None:
    if MULTIPROCESS:
        HELD_GAUGE.inc()
        HELD_MICRO_USD_GAUGE.inc(amount_micro_usd)
        return
    HELD.count += 1
    HELD.micro_usd += amount_micro_usd


def reservation_settled(
    amount_micro_usd: int,
    model: str,
    status: str,
    cost_micro_usd: int,
    upstream_status: int | None,
) -> None:
    if MULTIPROCESS:
        HELD_GAUGE.dec()
        HELD_MICRO_USD_GAUGE.dec(amount_micro_usd)
    else:
        HELD.count -= 1
        HELD.micro_usd -= amount_micro_usd
    child = _cost_children.get(model)
    if child is None:
        child = _cost_children[model] = COST.labels(bounded("model", model))
    if cost_micro_usd:
        child.inc(cost_micro_usd)
    if status == "failed" or (upstream_status is not None and upstream_status >= 400):
        provider = bounded("provider", model.split("/", 1)[0])
        UPSTREAM_ERRORS.labels(provider, str(upstream_status or "none")).inc()


def refused(reason: str) -> None:
    REFUSALS.labels(bounded("reason", reason)).inc()


def exposition() -> tuple[bytes, str]:
    """The text format of every metric (summed over workers in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
