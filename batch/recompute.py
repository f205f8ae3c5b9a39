"""Recompute one day from the lake: the exact views, late events per window, and anomaly baselines.

Day D's raw events (`lake/raw/<topic>/date=D/`) are deduplicated on `event_id` (the lowest Kafka
coordinates win), cleaned and aggregated by the same view definitions as the speed layer, with exact distinct
counts. Each output is written to `lake/views/<name>/date=D/` through a hidden temporary directory that is
swapped into place, so a reader sees either the previous day or the new one, never half of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from lambdaflow.lake import RAW_SCHEMAS, day_dir, raw_dir, view_dir
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS, clean, dedupe_exact, sensor_stats_partial, window_start

log = logging.getLogger(__name__)

LATE_EVENTS = "late_events"
BASELINES = "baselines"
BASELINE_DAYS = 7
OUTPUTS = (*VIEWS, LATE_EVENTS, BASELINES)
VIEW_CONTRACTS = ("iot_sensors", "user_activity")


def read_raw_days(spark: SparkSession, settings: Settings, contract: str, days: list[date]) -> DataFrame:
    """The raw events of a topic for the given days (those the lake has; none gives an empty frame)."""
    base = raw_dir(settings.lake_dir, settings.topic_for(contract))
    paths = [str(day_dir(base, day)) for day in days if day_dir(base, day).is_dir()]
    schema = from_arrow_schema(RAW_SCHEMAS[contract], prefer_timestamp_ntz=False)
    if not paths:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*paths)


def events_of_day(spark: SparkSession, settings: Settings, contract: str, day: date) -> DataFrame:
    """Day D's events, each `event_id` once, cleaned: the input of every batch view."""
    return clean(dedupe_exact(read_raw_days(spark, settings, contract, [day])))


def late_events(events: DataFrame, settings: Settings) -> DataFrame:
    """Per window and topic: the events, and those that reached Kafka more than the watermark after their
    event time (the speed layer dropped them; the batch layer has them)."""
    delay_us = F.unix_micros("_kafka_ts") - F.unix_micros("ts")
    late = delay_us > F.lit(settings.watermark_seconds * 1_000_000)
    return events.groupBy(
        window_start(settings.window_seconds).alias("window_start"), F.col("_topic").alias("topic")
    ).agg(F.count(F.lit(1)).alias("events"), F.sum(late.cast("long")).alias("late_events"))


def baselines(spark: SparkSession, settings: Settings, day: date, readings_of_day: DataFrame) -> DataFrame:
    """Per sensor and hour of day, the mean and (sample) standard deviation of temperature over the
    `BASELINE_DAYS` days ending with D: what the speed layer's anomaly rule compares a reading with.

    Day D's readings come deduplicated already; an event's copies share its event time, hence its day, so
    deduplicating day by day equals deduplicating the week."""
    earlier = [day - timedelta(days=n) for n in range(1, BASELINE_DAYS)]
    readings = readings_of_day.select("event_id", "sensor_id", "ts", "temperature").unionByName(
        dedupe_exact(read_raw_days(spark, settings, "iot_sensors", earlier)).select(
            "event_id", "sensor_id", "ts", "temperature"
        )
    )
    return readings.groupBy("sensor_id", F.hour("ts").alias("hour_of_day")).agg(
        F.avg("temperature").alias("temperature_mean"),
        F.coalesce(F.stddev_samp("temperature"), F.lit(0.0)).alias("temperature_std"),
        F.count(F.lit(1)).alias("samples"),
    )


@dataclass(frozen=True)
class DayResult:
    day: date
    rows: dict[str, int]  # output -> rows written
    seconds: float


def recompute_day(spark: SparkSession, settings: Settings, day: date) -> DayResult:
    """Recompute every batch output of day D and write them under `lake/views/`.

    The two topics' outputs run as two concurrent chains of Spark jobs: each job alone leaves a core idle
    in its single-task stages and its code generation."""
    started = time.monotonic()
    rows: dict[str, int] = {}

    def write(name: str, frame: DataFrame) -> None:
        rows[name] = write_day_atomically(frame, view_dir(settings.lake_dir, name), day)
        log.info("batch %s %s: %d rows (%.1f s so far)", day, name, rows[name], time.monotonic() - started)

    def chain(contract: str) -> DataFrame:
        # Not cached: re-reading the day's Parquet columns each view needs is cheaper than caching rows.
        events = events_of_day(spark, settings, contract, day)
        # sensor_stats and location_stats both finish the per-sensor rows: cached, Spark's cache serves both
        per_sensor = (
            sensor_stats_partial(events, settings.window_seconds).cache()
            if contract == "iot_sensors"
            else None
        )
        for name, view in VIEWS.items():
            if view.contract == contract:
                size = settings.session_gap_seconds if name == "sessions" else settings.window_seconds
                write(name, view.build(events, size))
        if per_sensor is not None:
            per_sensor.unpersist()
            write(BASELINES, baselines(spark, settings, day, events))
        late = late_events(events, settings).cache()  # a few hundred rows, computed inside the chain
        late.count()
        return late

    with ThreadPoolExecutor(len(VIEW_CONTRACTS), thread_name_prefix="batch") as pool:
        late = list(pool.map(chain, VIEW_CONTRACTS))
    write(LATE_EVENTS, late[0].unionByName(late[1]))
    log.info("batch %s recomputed in %.1f s", day, time.monotonic() - started)
    return DayResult(day, {name: rows[name] for name in OUTPUTS}, time.monotonic() - started)


def write_day_atomically(frame: DataFrame, base: Path, day: date) -> int:
    """Write a day's rows as `base/date=D/` (a few Parquet files) by swapping in a finished directory."""
    target = day_dir(base, day)
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".{target.name}.{uuid.uuid4().hex}.tmp"
    # Written as computed (no cache, no coalesce(1), which would pull the last stage into one task); the
    # row count comes from the written files' footers.
    frame.write.mode("error").parquet(str(staging))
    count = frame.sparkSession.read.parquet(str(staging)).count()
    retired = base / f".{target.name}.{uuid.uuid4().hex}.old"
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)
    return count
