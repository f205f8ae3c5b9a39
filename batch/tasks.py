"""The batch layer's steps as Airflow callables: Airflow passes the context values they name (`ds`,
`data_interval_end`); each loads the settings from the environment at run time."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, time, timedelta

from lambdaflow.lake import archiver_status_path
from lambdaflow.settings import load_settings

log = logging.getLogger(__name__)


def lake_complete_until() -> datetime | None:
    """The event time up to which the lake is complete: the smallest, over the topics, of the archiver's max
    event time (None before the archiver has seen every topic)."""
    settings = load_settings()
    path = archiver_status_path(settings.data_dir)
    if not path.exists():
        return None
    topics = json.loads(path.read_text())["topics"]
    seen = [topics.get(topic, {}).get("max_event_ts") for topic in settings.topics]
    if not all(seen):
        return None
    return min(datetime.fromisoformat(value) for value in seen)


def lake_ready(ds: str) -> bool:
    """The sensor: the archiver's max event time has passed the end of day `ds` plus the watermark.

    Every task keys on the run's logical date `ds`: a scheduled or backfilled run of [D, D+1) and
    `airflow dags test lambdaflow_batch D` both have `ds` = D (a manual run's inferred data interval is the
    one that ended at D, so the interval itself would disagree between the two)."""
    settings = load_settings()
    day_end = datetime.combine(date.fromisoformat(ds) + timedelta(days=1), time(), tzinfo=UTC)
    needed = day_end + timedelta(seconds=settings.watermark_seconds)
    complete = lake_complete_until()
    log.info("lake complete until %s; the day needs %s", complete, needed)
    return complete is not None and complete >= needed


def recompute(ds: str) -> dict[str, int]:
    from batch.recompute import recompute_day
    from lambdaflow.spark import spark_session

    settings = load_settings()
    spark = spark_session(settings, f"lambdaflow-batch-{ds}", kafka_source=False)
    try:
        result = recompute_day(spark, settings, date.fromisoformat(ds))
    finally:
        spark.stop()
    log.info("recomputed %s in %.1f s: %s", ds, result.seconds, result.rows)
    return result.rows


def publish(ds: str) -> str:
    from batch.publish import publish_batch_day

    return publish_batch_day(load_settings(), date.fromisoformat(ds)).isoformat()
