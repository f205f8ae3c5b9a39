"""Recompute one day from the lake: the exact views, late events per window, and anomaly baselines.

Day D's raw events (`lake/raw/<topic>/date=D/`, the files the run's raw gate recorded, or those there when
the recompute starts: `lambdaflow.lake.DayInputs`) are deduplicated on `event_id` (the lowest Kafka
coordinates win), cleaned and aggregated by the same view definitions as the speed layer, with exact distinct
counts. Each output is written to `lake/views/<name>/date=D/` through a hidden temporary directory that is
swapped into place, so a reader sees either the previous day or the new one, never half of it.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from lambdaflow.lake import (
    RAW_SCHEMAS,
    READ,
    VALIDATED,
    DayInputs,
    day_dir,
    day_inputs_path,
    local_path,
    raw_day_names,
    raw_dir,
    view_dir,
    write_day_inputs,
)
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS, Parameters, View
from lambdaflow.views.spark import SPARK_VIEWS, WindowInputs, clean, dedupe_exact

log = logging.getLogger(__name__)

LATE_EVENTS = "late_events"
BASELINES = "baselines"
BASELINE_DAYS = 7
OUTPUTS = (*VIEWS, LATE_EVENTS, BASELINES)
VIEW_CONTRACTS = tuple(dict.fromkeys(view.contract for view in VIEWS.values()))


def read_raw_days(spark: SparkSession, settings: Settings, contract: str, days: list[date]) -> DataFrame:
    """The raw events of a topic for the given days (those the lake has; none gives an empty frame)."""
    base = raw_dir(settings.lake_dir, settings.topic_for(contract))
    paths = [str(day_dir(base, day)) for day in days if day_dir(base, day).is_dir()]
    schema = from_arrow_schema(RAW_SCHEMAS[contract], prefer_timestamp_ntz=False)
    if not paths:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(*paths)


def read_raw_inputs(
    spark: SparkSession, settings: Settings, contract: str, day: date, inputs: DayInputs | None
) -> tuple[DataFrame, tuple[str, ...]]:
    """Day D's raw records of a topic from the files of `inputs` (None: the files Spark lists now), and the
    names of the files read. Files archived after `inputs` were taken are left out."""
    topic = settings.topic_for(contract)
    frame = read_raw_days(spark, settings, contract, [day])
    folder = day_dir(raw_dir(settings.lake_dir, topic), day)
    # the file index lists once: every job over `frame` reads these files
    listed = raw_day_names(folder, [local_path(uri) for uri in frame.inputFiles()])
    if inputs is None:
        return frame, listed
    wanted = inputs.names(topic)
    if missing := sorted(set(wanted) - set(listed)):
        record = day_inputs_path(settings.lake_dir, day, VALIDATED)
        raise FileNotFoundError(
            f"{len(missing)} raw files of {day} that its inputs list are not in {folder} "
            f"(e.g. {missing[0]}); run the day's raw gate again (it records {record})"
        )
    if later := set(listed) - set(wanted):
        # the archiver writes a day's files side by side: a file's name alone tells it apart
        later_names = {Path(name).name for name in later}
        if later_names & {Path(name).name for name in wanted}:
            raise ValueError(f"{folder} holds files of the same name in different folders: {sorted(later)}")
        frame = frame.where(~F.col("_metadata.file_name").isin(sorted(later_names)))
    return frame, wanted


def is_late(settings: Settings) -> Column:
    """1 for an event that reached Kafka more than the watermark after its event time (the speed layer
    dropped it; the batch layer has it), else 0."""
    delay_us = F.unix_micros("_kafka_ts") - F.unix_micros("ts")
    return (delay_us > F.lit(settings.watermark_seconds * 1_000_000)).cast("long")


def late_events(per_window: DataFrame, topic: str) -> DataFrame:
    """Per window of a topic, its events and its late ones, from rows per window (and more keys) that carry
    `events` and `late_events`: the view aggregation that counted the events counted the late ones too."""
    return per_window.groupBy("window_start").agg(
        F.lit(topic).alias("topic"), *(F.sum(name).alias(name) for name in ("events", LATE_EVENTS))
    )


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


def recompute_day(
    spark: SparkSession, settings: Settings, day: date, inputs: DayInputs | None = None
) -> DayResult:
    """Recompute every batch output of day D from the raw files of `inputs` (None: those in the lake now),
    write them under `lake/views/`, and record the files read as the day's inputs (the view gate counts
    them).

    The two topics' outputs run as two concurrent chains of Spark jobs: each job alone leaves a core idle
    in its single-task stages and its code generation."""
    started = time.monotonic()
    rows: dict[str, int] = {}

    def write(name: str, frame: DataFrame) -> None:
        rows[name] = write_day_atomically(frame, view_dir(settings.lake_dir, name), day)
        log.info("batch %s %s: %d rows (%.1f s so far)", day, name, rows[name], time.monotonic() - started)

    parameters = Parameters.from_settings(settings)
    read: dict[str, tuple[str, ...]] = {}

    def chain(contract: str) -> DataFrame:
        raw, read[settings.topic_for(contract)] = read_raw_inputs(spark, settings, contract, day, inputs)
        # Not cached: re-reading the day's Parquet columns each view needs is cheaper than caching rows.
        events = clean(dedupe_exact(raw))  # each `event_id` once: the input of every view
        views = [view for view in VIEWS.values() if view.contract == contract]
        # The per-window rows of the first view that has them (one per window and sensor, or group: small,
        # cached) serve that view, the views that declare it their batch input, and the late events.
        carrier = _late_events_carrier(views, parameters)
        computation = SPARK_VIEWS[carrier.name]
        assert computation.per_window is not None
        late = {LATE_EVENTS: is_late(settings)}
        finished = [view for view in views if _finished_from(view, carrier, parameters)]
        window_inputs = functools.reduce(
            operator.add,
            (SPARK_VIEWS[view.name].inputs(parameters) for view in finished if SPARK_VIEWS[view.name].inputs),
            WindowInputs(),
        )
        per_window = computation.per_window(events, parameters, late, window_inputs).cache()
        for view in views:
            finish = SPARK_VIEWS[view.name].finish
            if view in finished:
                assert finish is not None
                write(view.name, finish(per_window, events, parameters).drop(LATE_EVENTS))
            else:
                write(view.name, SPARK_VIEWS[view.name].build(events, parameters))
        if contract == "iot_sensors":
            write(BASELINES, baselines(spark, settings, day, events))
        late_rows = late_events(per_window, settings.topic_for(contract)).cache()
        late_rows.count()
        per_window.unpersist()
        return late_rows

    with ThreadPoolExecutor(len(VIEW_CONTRACTS), thread_name_prefix="batch") as pool:
        late = list(pool.map(chain, VIEW_CONTRACTS))
    write(LATE_EVENTS, functools.reduce(DataFrame.unionByName, late))
    write_day_inputs(settings.lake_dir, DayInputs(day, read), READ)
    log.info("batch %s recomputed in %.1f s", day, time.monotonic() - started)
    return DayResult(day, {name: rows[name] for name in OUTPUTS}, time.monotonic() - started)


def _finished_from(view: View, carrier: View, parameters: Parameters) -> bool:
    """Whether the batch layer finishes `view` from the carrier's per-window rows: the carrier itself, or a
    view that declares it its input and whose windows are whole numbers of the carrier's."""
    return view.name == carrier.name or view.rolled_up_from(carrier, parameters)


def _late_events_carrier(views: list[View], parameters: Parameters) -> View:
    """The view whose per-window rows count a contract's late events: the first with per-window rows in the
    settings' window (the late events' windows)."""
    for view in views:
        if (
            SPARK_VIEWS[view.name].per_window is not None
            and view.window(parameters) == parameters.window_seconds
        ):
            return view
    raise ValueError(f"no view of {views[0].contract} has per-window rows to count its late events")


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
