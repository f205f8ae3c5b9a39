"""`/metrics`: Prometheus metrics of the serving app, its requests by endpoint and status and their latency,
and, read from the store at each scrape, the streaming queries' progress, lag and status, alerts fired and
the archiver's counts. Needs the API token like the API (it is data: query names, topics, volumes).

Under `lambdaflow serve` each server worker counts its own requests; prometheus_client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set by `serving.server` before the workers start) adds them up at a scrape,
whichever worker answers it. A plain Flask route, outside the OpenAPI document: its answer is Prometheus
text, not the API's JSON.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.exc import SQLAlchemyError

from lambdaflow.lake import archiver_status_path
from lambdaflow.metrics import Families, archiver_metrics, progress_metrics
from lambdaflow.store import utc_naive
from serving import merge
from serving.health import query_status

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
STATUSES = ("ok", "stalled", "down")
# where a request's arrival is kept when something before the app (serving.fast_path) saw it first
STARTED = "lambdaflow.started"
# Labels come from the route, not the path, and from known methods only: a client cannot grow the series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_REGISTRY = CollectorRegistry()  # this process's request metrics, when not under the server's workers
REQUESTS = Counter("lambdaflow_http_requests", "HTTP requests answered by the serving app",
                   ["method", "endpoint", "status"], registry=_REGISTRY)  # fmt: skip
LATENCY = Histogram("lambdaflow_http_request_duration_seconds", "Time the serving app took to answer",
                    ["method", "endpoint"], registry=_REGISTRY)  # fmt: skip

metrics = Blueprint("metrics", __name__)


@metrics.route("/metrics")
def scrape() -> Response:
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_DIR):
        MultiProcessCollector(registry)
    else:
        registry.register(_REGISTRY)
    registry.register(Families(_stream_families))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))  # as the client's own server
    return Response(encode(registry), content_type=content_type)


def _stream_families() -> list[Metric]:
    settings = current_app.extensions["lambdaflow.settings"]
    up = GaugeMetricFamily("lambdaflow_store_up", "1 when the serving store answered this scrape")
    status = GaugeMetricFamily(
        "lambdaflow_stream_query_status",
        "1 for the query's /health status (ok, stalled or down), 0 for the others",
        labels=["query", "status"],
    )
    try:
        rows = merge.stream_progress(current_app.extensions["lambdaflow.store"])
    except SQLAlchemyError:
        up.add_metric([], 0)
        return [up, *archiver_metrics(archiver_status_path(settings.data_dir))]
    up.add_metric([], 1)
    now = utc_naive(datetime.now(UTC))
    for row in rows:
        current = query_status(row, now, settings.health_stream_stale_seconds)
        for name in STATUSES:
            status.add_metric([row["query"], name], 1 if name == current else 0)
    return [up, status, *progress_metrics(rows), *archiver_metrics(archiver_status_path(settings.data_dir))]


def instrument(app: Flask) -> None:
    """Count and time every request (register before the token check, so refused requests count too)."""
    app.before_request(_start)
    app.after_request(_observe)


def _start() -> None:
    g.lambdaflow_started = request.environ.get(STARTED) or time.perf_counter()


@cache
def _series(method: str, endpoint: str, status: int) -> tuple[Any, Any]:
    """A request's counter and histogram: `labels` checks and locks on every call, and the label sets are
    few (known methods, the app's rules, its statuses)."""
    return REQUESTS.labels(method, endpoint, str(status)), LATENCY.labels(method, endpoint)


def _observe(response: Any) -> Any:
    started = g.pop("lambdaflow_started", None)
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    count_request(request.method, endpoint, response.status_code, started)
    return response


def count_request(method: str, endpoint: str, status: int, started: float | None) -> None:
    """Count a request answered with `status`, and time it from `started` (`time.perf_counter`)."""
    count, latency = _series(method if method in METHODS else "other", endpoint, status)
    count.inc()
    if started is not None:
        latency.observe(time.perf_counter() - started)
