"""`/health`: is the store reachable, how far each view's batch horizon is, and how fresh the stream is."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from lambdaflow import store
from lambdaflow.lake import view_dir
from lambdaflow.metrics import offsets_of
from lambdaflow.store import utc_naive
from lambdaflow.views import VIEWS
from serving import merge
from serving.api import ApiBlueprint
from serving.params import NoQuery
from serving.schemas import Health

health = ApiBlueprint("health", __name__, description="Liveness of the store, the batch layer and the stream")


def query_status(row: Mapping[str, Any], now: datetime, stale_seconds: float) -> str:
    """`down`: the stream has not reported on the query for `stale_seconds` (it is not running); `stalled`:
    it reports, but the query has lag and its processed offsets have not moved for `stale_seconds`; else
    `ok` (an idle query, lag 0, is ok however long it waits)."""
    if (now - row["updated_at"]).total_seconds() > stale_seconds:
        return "down"
    progressed_at = row.get("progressed_at")
    if row.get("lag_records") and progressed_at and (now - progressed_at).total_seconds() > stale_seconds:
        return "stalled"
    return "ok"


_AS_STORED = ("batch_id", "updated_at", "lag_records", "max_event_ts", "watermark", "input_rows", "late_rows",
              "invalid_rows")  # fmt: skip


def _stream_status(rows: list[dict[str, Any]], now: datetime, stale_seconds: float) -> dict[str, Any]:
    queries = []
    for row in rows:
        status = query_status(row, now, stale_seconds)
        progressed_at = row["progressed_at"]
        queries.append({
            "query": row["query"], "status": status, "ok": status == "ok",
            **{name: row[name] for name in _AS_STORED},
            "seconds_since_update": round((now - row["updated_at"]).total_seconds(), 3),
            "seconds_since_progress": None if progressed_at is None else
            round((now - progressed_at).total_seconds(), 3),
            "end_offsets": offsets_of(row["end_offsets"]),
            "processed_offsets": offsets_of(row["processed_offsets"]),
        })  # fmt: skip
    return {"ok": bool(queries) and all(q["ok"] for q in queries), "stale_after_seconds": stale_seconds,
            "queries": queries}  # fmt: skip


def last_recompute(lake: Path) -> datetime | None:
    """When the batch layer last wrote a recomputed day into the lake (the newest view day directory)."""
    days = (day for view in VIEWS for day in view_dir(lake, view).glob("date=*"))
    newest = max((day.stat().st_mtime for day in days), default=None)
    return None if newest is None else utc_naive(datetime.fromtimestamp(newest, UTC))


@health.route("/health")
@health.arguments(NoQuery, location="query", as_kwargs=False)
@health.response(HTTPStatus.OK, Health)
@health.alt_response(HTTPStatus.SERVICE_UNAVAILABLE, schema=Health, description="A part is down or stalled")
@health.alt_response(HTTPStatus.REQUEST_URI_TOO_LONG, response=HTTPStatus.REQUEST_URI_TOO_LONG.name)
@health.doc(security=[], summary="Store, batch horizons, each stream query's offsets and lag; needs no token")
def report(_: dict[str, Any]) -> Any:
    """200 when the store answers and every streaming query is `ok`; 503 (with the same body) when the
    store is down or a query is `down` (no report for `stale_after_seconds`) or `stalled` (lag, and its
    processed offsets not moving for as long). Needs no credentials and shows no data."""
    engine = current_app.extensions["lambdaflow.store"]
    settings = current_app.extensions["lambdaflow.settings"]
    now = utc_naive(datetime.now(UTC))
    body: dict[str, Any] = {"time": now}
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            last_run = connection.execute(select(func.max(store.quality_runs.c.run_at))).scalar()
        body["store"] = {"ok": True, "dialect": engine.dialect.name}
        body["batch"] = {
            "horizons": merge.horizons(engine),
            "last_recompute": last_recompute(settings.lake_dir),
            "last_quality_run": last_run,
        }
        body["stream"] = _stream_status(
            merge.stream_progress(engine), now, settings.health_stream_stale_seconds
        )
    except SQLAlchemyError as exc:
        body["store"] = {"ok": False, "error": str(exc.__cause__ or exc).splitlines()[0]}
        body["stream"] = {"ok": False, "queries": []}
    healthy = body["store"]["ok"] and body["stream"]["ok"]
    body["status"] = "ok" if healthy else "down"
    response = current_app.json.response(body)
    response.status_code = 200 if healthy else 503
    return response
