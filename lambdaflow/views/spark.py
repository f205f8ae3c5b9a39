"""How Spark computes each view (what a view is: `lambdaflow.views.definitions`), and the event preparation
both layers share: cleaning, exact dedupe (batch) and dedupe within the watermark (speed).

The batch layer applies a view to one day of the lake; the speed layer applies its partial aggregation (of
which the view is the finished form) to every micro-batch and merges the partials, so the two layers share
the code that aggregates. Windows are tumbling and aligned to UTC midnight (Spark aligns windows to the
epoch, and a window's length divides a day), so no window spans two days. Distinct counts are exact in batch
and HyperLogLog sketches in the speed layer.
"""

from __future__ import annotations

import functools
import operator
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import datasketches
from pyspark import SparkContext
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lambdaflow.alerts import READING_THRESHOLDS, Thresholds
from lambdaflow.pyspark_compat import active_context, dataframe_from_java, java_dataframe, jvm
from lambdaflow.views.definitions import VIEWS
from lambdaflow.views.model import CLEANED_COLUMNS, HLL_LG_K, Parameters

Built = TypeVar("Built")
_BUILT: weakref.WeakKeyDictionary[SparkContext, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def built_once(build: Callable[..., Built]) -> Callable[..., Built]:
    """`build`'s Columns, built once per SparkContext and arguments (hashable; the result must not be
    mutated). PySpark builds a Column in Py4J round trips to the JVM, two or more per function call, and the
    speed layer builds its views' DataFrames anew every micro-batch; a Column is an unresolved expression,
    resolved by each DataFrame that uses it."""

    @functools.wraps(build)
    def cached(*args: Any) -> Built:
        context = active_context()
        if context is None:
            return build(*args)
        built = _BUILT.setdefault(context, {})
        key = (build.__qualname__, *args)
        if key not in built:
            built[key] = build(*args)
        return built[key]

    return cached


KAFKA_ORDER = ("_topic", "_partition", "_offset")


def clean(events: DataFrame) -> DataFrame:
    """Trim and lower-case the categorical strings, so ' Chrome ' and 'chrome' are one browser."""
    for name in CLEANED_COLUMNS:
        if name in events.columns:
            events = events.withColumn(name, F.lower(F.trim(F.col(name))))
    return events


def dedupe_exact(events: DataFrame) -> DataFrame:
    """Keep one row per `event_id`: the one with the lowest Kafka coordinates (the first one received).

    Duplicates are rare, so only the repeated ids are ordered: a count per 64-bit hash of the id (a narrow
    hash aggregate) finds the candidates (a hash collision only makes two ids candidates), their copies are
    ranked per `event_id`, and the Kafka coordinates of every copy but the first (a small set) are broadcast
    to an anti-join: each later use of the result is one scan of the input. Ranking every row (a sort of the
    whole day's rows) costs several times more. Eager: it computes the candidates and the copies to drop."""
    coordinates = [name for name in KAFKA_ORDER if name in events.columns]
    order = [F.col(name) for name in coordinates] or [F.col("ts")]

    def ranked(rows: DataFrame) -> DataFrame:
        return rows.withColumn("_copy", F.row_number().over(Window.partitionBy("event_id").orderBy(*order)))

    id_hash = F.xxhash64("event_id")
    # Nearly every hash is its own group: a partial aggregation before the shuffle would only copy the rows
    # (as many keys out as in, spilling), so the 8-byte hashes are shuffled first and counted once.
    repeated = (
        events.select(id_hash.alias("_id_hash")).repartition("_id_hash")
        .groupBy("_id_hash").agg(F.count(F.lit(1)).alias("_copies")).where("_copies > 1")
        .select("_id_hash").cache()
    )  # fmt: skip
    count = repeated.count()
    if count == 0 or count > REPEATED_IDS_BROADCAST_LIMIT:
        repeated.unpersist()
        return events if count == 0 else ranked(events).where("_copy = 1").drop("_copy")
    candidate = id_hash == F.broadcast(repeated)["_id_hash"]
    candidates = events.join(F.broadcast(repeated), candidate, "left_semi")
    if len(coordinates) == len(KAFKA_ORDER):
        copies = ranked(candidates.select("event_id", *KAFKA_ORDER)).cache()  # only what ranking needs
        if not _shared_coordinates(copies):
            later_copies = copies.where("_copy > 1").select(*KAFKA_ORDER).cache()
            later_copies.count()
            copies.unpersist()
            repeated.unpersist()
            kept = events.join(F.broadcast(later_copies), list(KAFKA_ORDER), "left_anti")
            return kept.select(*events.columns)
        copies.unpersist()
    # no Kafka coordinates, or one record stored twice: name the copies to keep by rank, not coordinates
    once = events.join(F.broadcast(repeated), candidate, "left_anti")
    return once.unionByName(ranked(candidates).where("_copy = 1").drop("_copy"))


def _shared_coordinates(copies: DataFrame) -> bool:
    """Whether two of the candidate rows have the same Kafka coordinates (an archiver that re-read the topic
    from a new checkpoint); an anti-join on coordinates would then drop both."""
    return bool(copies.groupBy(*KAFKA_ORDER).count().where("count > 1").limit(1).count())


# Above this many candidate ids in one dedupe, their hashes are not broadcast (8 bytes each).
REPEATED_IDS_BROADCAST_LIMIT = 2_000_000


def dedupe_within_watermark(events: DataFrame) -> DataFrame:
    """Drop repeated `event_id`s seen within the watermark (the stream must have one, on `ts`), as Spark's
    `dropDuplicatesWithinWatermark` does, but with state whose upkeep does not grow with the ids held
    (`lambdaflow/java/DedupeWithinWatermark.java`, which takes the delay from the watermark): Spark's operator
    reads every id it holds on every micro-batch, so its micro-batches slow down as the ids pile up. Every
    session from `lambdaflow.spark` loads the class and keeps state in RocksDB."""
    spark = events.sparkSession
    dedupe = jvm(spark).lambdaflow.DedupeWithinWatermark
    return dataframe_from_java(dedupe.apply(java_dataframe(events), "event_id", "ts"), spark)


@built_once
def breaks_a_threshold(thresholds: Thresholds) -> Column:
    """Whether a reading breaks a threshold alert rule (`lambdaflow.alerts.READING_THRESHOLDS`)."""
    rules = [
        (operator.gt if rule.above else operator.lt)(F.col(rule.column), rule.limit(thresholds))
        for rule in READING_THRESHOLDS
    ]
    return functools.reduce(operator.or_, rules)


def window_start(window_seconds: int, of: str = "ts") -> Column:
    """The start of the tumbling window holding the time `of`: integer arithmetic on epoch microseconds (the
    same windows as `F.window`, without the struct and filter it adds to every aggregation)."""
    micros = F.unix_micros(of)
    return F.timestamp_micros(micros - F.pmod(micros, F.lit(window_seconds * 1_000_000)))


# The speed layer keeps each view incrementally: every micro-batch's events are aggregated into partial rows
# (the view's keys, mergeable columns), which are combined with the stored partial rows of the same keys.
# Each view below is its partial aggregation finished (averages from sums); only the distinct counts differ:
# exact in batch, HyperLogLog sketches in the speed layer (see `lambdaflow.views.model.Increment`).


def _sketch(column: str) -> Column:
    return F.hll_sketch_agg(column, HLL_LG_K)


def _average(name: str) -> Column:
    return (F.col(f"{name}_sum") / F.col("events")).alias(f"{name}_avg")


def _sums(names: Iterable[str]) -> list[Column]:
    return [F.sum(name).alias(name) for name in names]


@dataclass(frozen=True)
class WindowInputs:
    """What a view finished from another view's per-window rows needs in them: per-event `columns` added
    before the aggregation, and more `aggregates` (over the events and those columns), one column each."""

    columns: Mapping[str, Column] = field(default_factory=dict)
    aggregates: Mapping[str, Column] = field(default_factory=dict)

    def __add__(self, other: WindowInputs) -> WindowInputs:
        return WindowInputs({**self.columns, **other.columns}, {**self.aggregates, **other.aggregates})


def sensor_stats_partial(
    events: DataFrame,
    window_seconds: int,
    extra_sums: Mapping[str, Column] | None = None,
    inputs: WindowInputs | None = None,
) -> DataFrame:
    """Per window and sensor (`extra_sums`: more per-event values summed per row, e.g. the batch layer's
    late events; `inputs`: what views rolled up from these rows need; so that one aggregation serves them
    too)."""
    inputs = inputs or WindowInputs()
    columns = {**(extra_sums or {}), **inputs.columns}
    keys, aggregates = _sensor_stats_columns(window_seconds)
    more = [column.alias(name) for name, column in inputs.aggregates.items()]
    return (
        (events.withColumns(columns) if columns else events)
        .groupBy(*keys)
        .agg(*aggregates, *_sums(extra_sums or {}), *more)
    )


@built_once
def _sensor_stats_columns(window_seconds: int) -> tuple[tuple[Column, ...], tuple[Column, ...]]:
    keys = (window_start(window_seconds).alias("window_start"), F.col("sensor_id"), F.col("location"))
    return keys, (
        F.count(F.lit(1)).alias("events"),
        F.sum("temperature").alias("temperature_sum"),
        F.min("temperature").alias("temperature_min"),
        F.max("temperature").alias("temperature_max"),
        F.sum("humidity").alias("humidity_sum"),
        F.sum("pressure").alias("pressure_sum"),
        F.min("battery").alias("battery_min"),
    )


def sensor_stats(events: DataFrame, window_seconds: int) -> DataFrame:
    return sensor_stats_from_partial(sensor_stats_partial(events, window_seconds))


def sensor_stats_from_partial(per_sensor: DataFrame) -> DataFrame:
    return per_sensor.select(
        "window_start", "sensor_id", "location", "events", _average("temperature"), "temperature_min",
        "temperature_max", _average("humidity"), _average("pressure"), "battery_min",
    )  # fmt: skip


def location_stats_partial(events: DataFrame, window_seconds: int) -> DataFrame:
    keys, aggregates = _location_stats_columns(window_seconds)
    return events.groupBy(*keys).agg(*aggregates)


@built_once
def _location_stats_columns(window_seconds: int) -> tuple[tuple[Column, ...], tuple[Column, ...]]:
    return (window_start(window_seconds).alias("window_start"), F.col("location")), (
        F.count(F.lit(1)).alias("events"),
        _sketch("sensor_id").alias("sensors_sketch"),
        F.sum("temperature").alias("temperature_sum"),
        F.max("temperature").alias("temperature_max"),
    )


def location_stats(events: DataFrame, window_seconds: int) -> DataFrame:
    return location_stats_from_partial(sensor_stats_partial(events, window_seconds))


def location_stats_from_partial(per_sensor: DataFrame) -> DataFrame:
    """Rolled up from the per-sensor rows: a location's distinct sensors in a window are its sensor rows,
    so the exact count needs no distinct aggregate over the events."""
    return (
        per_sensor.groupBy("window_start", "location")
        .agg(
            F.sum("events").alias("events"),
            F.count(F.lit(1)).alias("sensors"),
            F.sum("temperature_sum").alias("temperature_sum"),
            F.max("temperature_max").alias("temperature_max"),
        )
        .select("window_start", "location", "events", "sensors", _average("temperature"), "temperature_max")
    )


def location_stats_partial_from_windows(
    windows: list[dict[str, Any]], window_seconds: int
) -> list[dict[str, Any]]:
    """location_stats' partial rows from the per-sensor rows of windows dividing its own, one per key. The
    distinct sensors are sketched from the rows' sensor ids as `hll_sketch_agg` sketches them from the events:
    DataSketches hashes a string's UTF-8 bytes alike in Java and Python, so the sketches union as one."""
    increment = VIEWS["location_stats"].increment
    window_us = window_seconds * 1_000_000
    rows: dict[tuple[datetime, str], dict[str, Any]] = {}
    sensors: dict[tuple[datetime, str], datasketches.hll_sketch] = {}
    for window in windows:
        key = (_window_of(window["window_start"], window_us), window["location"])
        row = rows.get(key)
        if row is None:
            rows[key] = {"window_start": key[0], "location": key[1],
                         **{name: window[name] for name in (*increment.sums, *increment.maxes)}}  # fmt: skip
            sensors[key] = datasketches.hll_sketch(HLL_LG_K)
        else:
            for name in increment.sums:
                row[name] += window[name]
            for name in increment.maxes:
                row[name] = max(row[name], window[name])
        sensors[key].update(window["sensor_id"])
    for key, row in rows.items():
        row["sensors_sketch"] = sensors[key].serialize_compact()
    return list(rows.values())


def activity_stats_partial(events: DataFrame, window_seconds: int) -> DataFrame:
    keys, aggregates = _activity_stats_columns(window_seconds)
    return events.groupBy(*keys).agg(*aggregates)


@built_once
def _activity_stats_columns(window_seconds: int) -> tuple[tuple[Column, ...], tuple[Column, ...]]:
    keys = (window_start(window_seconds).alias("window_start"), F.col("event_type"), F.col("browser"))
    return keys, (
        F.count(F.lit(1)).alias("events"),
        _sketch("user_id").alias("users_sketch"),
        F.coalesce(F.sum("amount"), F.lit(0.0)).alias("revenue"),
    )


def activity_stats(
    events: DataFrame, window_seconds: int, extra_sums: Mapping[str, Column] | None = None
) -> DataFrame:
    """Rolled up from per-user rows: a group's distinct users are its user rows (two hash aggregations,
    cheaper than Spark's plan for a distinct count next to other aggregates). The events are partitioned
    by the group first, so both aggregations run in one stage: a user's events rarely repeat a group, and a
    partial aggregation before a shuffle on the per-user key would copy every row.
    `extra_sums` as in `sensor_stats_partial`: more per-event values, summed per group."""
    keys = ("window_start", "event_type", "browser")
    extra = dict(extra_sums or {})
    by_group = events.select(
        window_start(window_seconds).alias("window_start"), "event_type", "browser", "user_id", "amount",
        *(column.alias(name) for name, column in extra.items()),
    ).repartition(*keys)  # fmt: skip
    per_user = by_group.groupBy(*keys, "user_id").agg(
        F.count(F.lit(1)).alias("events"), F.sum("amount").alias("revenue"), *_sums(extra)
    )
    return per_user.groupBy(*keys).agg(
        F.sum("events").alias("events"),
        F.count("user_id").alias("users"),
        F.coalesce(F.sum("revenue"), F.lit(0.0)).alias("revenue"),
        *_sums(extra),
    )


def _session_columns(events: DataFrame, *more: Column) -> DataFrame:
    """Only what sessions aggregate, the event type already a purchase flag: narrower rows to shuffle."""
    return events.select(*more, *_session_inputs())


@built_once
def _session_inputs() -> tuple[Column, ...]:
    purchase = F.when(F.col("event_type") == "purchase", 1).otherwise(0).alias("_purchase")
    return F.col("session_id"), F.col("user_id"), F.col("ts"), purchase, F.col("amount")


@built_once
def _session_aggregates() -> tuple[Column, ...]:
    return (
        F.min("ts").alias("session_start"),
        F.max("ts").alias("session_end"),
        F.count(F.lit(1)).alias("events"),
        F.sum("_purchase").alias("purchases"),
        F.coalesce(F.sum("amount"), F.lit(0.0)).alias("revenue"),
    )


def sessions(events: DataFrame, gap_seconds: int) -> DataFrame:
    """One row per session: a `session_id`'s events, in time order, until a silence of `gap_seconds` or more
    (Spark's session window, spelled as a running count of the gaps: one sort instead of two).

    The sort leads with a 64-bit hash of the key: Spark compares rows by an 8-byte prefix of the first sort
    column first, and ids that share a prefix ("session-…") would make every comparison a full one."""
    keys = ("_key_hash", "session_id", "user_id")
    by_time = Window.partitionBy(*keys).orderBy("ts")
    silence_us = F.unix_micros("ts") - F.lag(F.unix_micros("ts")).over(by_time)
    starts_session = F.coalesce(silence_us >= F.lit(gap_seconds * 1_000_000), F.lit(False)).cast("int")
    running = by_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return (
        _session_columns(events, F.xxhash64("session_id", "user_id").alias("_key_hash"))
        .withColumn("_session", F.sum(starts_session).over(running))
        .groupBy(*keys, "_session")  # with the hash: the window's partitioning serves it, no second shuffle
        .agg(*_session_aggregates())
        .withColumn(
            "duration_s",
            (F.unix_micros("session_end") - F.unix_micros("session_start")) / F.lit(1_000_000.0),
        )
        .select(
            "session_id",
            "user_id",
            "session_start",
            "session_end",
            "duration_s",
            "events",
            "purchases",
            "revenue",
        )
    )


def sessions_partial(events: DataFrame, gap_seconds: int) -> DataFrame:
    """Partial sessions: a session's events within one gap-long bucket of time are always closer than the gap,
    so they are one piece of one session (a hash aggregate, cheaper than sorting into session windows); the
    merge joins the pieces closer than the gap."""
    return (
        _session_columns(events)
        .groupBy(*_session_piece_keys(gap_seconds))
        .agg(*_session_aggregates())
        .drop("_bucket")
    )


@built_once
def _session_piece_keys(gap_seconds: int) -> tuple[Column, ...]:
    bucket = F.floor(F.unix_micros("ts") / F.lit(gap_seconds * 1_000_000))
    return F.col("session_id"), F.col("user_id"), bucket.alias("_bucket")


def device_health_partial(events: DataFrame, window_seconds: int, thresholds: Thresholds) -> DataFrame:
    """Per window and sensor: readings, the lowest battery, the readings that broke a threshold rule, and
    the latest reading by (ts, event_id) (a struct's max: deterministic, whatever order the rows come in)."""
    keys, aggregates, latest = _device_health_columns(window_seconds, thresholds)
    return events.groupBy(*keys).agg(*aggregates).select(*latest)


@built_once
def _device_health_columns(
    window_seconds: int, thresholds: Thresholds
) -> tuple[tuple[Column, ...], tuple[Column, ...], tuple[Column, ...]]:
    keys = (window_start(window_seconds).alias("window_start"), F.col("sensor_id"))
    aggregates = (
        F.count(F.lit(1)).alias("readings"),
        F.min("battery").alias("battery_min"),
        F.sum(breaks_a_threshold(thresholds).cast("long")).alias("alerting_readings"),
        F.max(F.struct("ts", "event_id", "battery")).alias("_latest"),
    )
    latest = (
        *(
            F.col(name)
            for name in ("window_start", "sensor_id", "readings", "battery_min", "alerting_readings")
        ),
        F.col("_latest.ts").alias("last_seen"),
        F.col("_latest.event_id").alias("last_event_id"),
        F.col("_latest.battery").alias("battery_last"),
    )
    return keys, aggregates, latest


def device_health_from_partial(partial: DataFrame) -> DataFrame:
    return partial.select(
        "window_start", "sensor_id", "readings", "battery_min", "battery_last", "last_seen",
        (F.col("alerting_readings") / F.col("readings")).alias("alert_share"),
    )  # fmt: skip


# A row's place in a window's time order as one fixed-width number: (time, row number) as a 38-digit decimal.
# Aggregates over it keep Spark's hash aggregation; a (ts, event_id) struct or a string in an aggregation
# buffer turns the whole aggregation (every sensor_stats column with it) into a sort of the day's readings.
_ROW_BITS = 2**64
_ORDER_PART = "decimal(20,0)"


def _order_number(value: int) -> Column:
    return F.lit(str(value)).cast(_ORDER_PART)  # beyond a long


@built_once
def device_health_inputs(thresholds: Thresholds) -> WindowInputs:
    """What device_health needs in finer per-sensor windows (`device_health_from_windows` rolls them up):
    the alerting readings, and the latest reading's time and battery. The battery is taken from the row with
    the greatest (ts, row number), exact when one reading has the latest time; the greatest (ts, -row number)
    tells whether another reading shares that time (a tie its event id breaks). The row number is a column
    of its own: an aggregate evaluates its input more than once per row."""
    micros = F.unix_micros("ts").cast(_ORDER_PART) * _order_number(_ROW_BITS)
    row = F.col("_row").cast(_ORDER_PART)
    first_order = micros + row
    last_order = micros + (_order_number(_ROW_BITS - 1) - row)
    return WindowInputs(
        # unique per row within one computation
        columns={"_row": F.monotonically_increasing_id()},
        aggregates={
            "alerting_readings": F.sum(breaks_a_threshold(thresholds).cast("long")),
            "last_seen": F.max("ts"),
            "_latest_order": F.max(first_order),
            "_latest_reverse_order": F.max(last_order),
            "_latest_battery": F.max_by("battery", first_order),
        },
    )


def device_health_from_windows(windows: DataFrame, events: DataFrame, window_seconds: int) -> DataFrame:
    """device_health rolled up from per-sensor rows of windows dividing its own, which carry
    `device_health_inputs` (one aggregation of the readings serves both views). A window whose latest time
    more than one reading shares takes its battery from the latest of those by event id, looked up among
    the readings at those times only (rare: two readings of a sensor in the same microsecond)."""
    keys = ("window_start", "sensor_id")
    hourly = windows.groupBy(
        window_start(window_seconds, of="window_start").alias("window_start"), "sensor_id"
    )
    rolled = hourly.agg(
        F.sum("events").alias("readings"),
        F.min("battery_min").alias("battery_min"),
        F.sum("alerting_readings").alias("alerting_readings"),
        F.max("last_seen").alias("last_seen"),
        F.max_by("_latest_battery", "_latest_order").alias("battery_last"),
        F.max("_latest_order").alias("_order"),
        F.max("_latest_reverse_order").alias("_reverse_order"),
    )
    rows = _order_number(_ROW_BITS)
    shared = F.pmod("_order", rows) + F.pmod("_reverse_order", rows) != _order_number(_ROW_BITS - 1)
    rolled = rolled.withColumn("_shared", shared).drop("_order", "_reverse_order")
    tied = rolled.where("_shared").select("sensor_id", F.col("last_seen").alias("ts"))
    if tied.limit(1).count():
        latest = (
            events.join(F.broadcast(tied), ["sensor_id", "ts"], "left_semi")
            .groupBy(window_start(window_seconds).alias("window_start"), "sensor_id")
            .agg(F.max(F.struct("ts", "event_id", "battery")).alias("_latest"))
            .select(*keys, F.col("_latest.battery").alias("_tie_battery"))
        )
        rolled = rolled.join(latest, list(keys), "left").withColumn(
            "battery_last", F.coalesce("_tie_battery", "battery_last")
        )
    return device_health_from_partial(rolled)


@built_once
def device_health_partial_inputs(thresholds: Thresholds) -> WindowInputs:
    """What device_health's speed partial rows need in the per-sensor rows of finer windows: the alerting
    readings and the latest reading by (ts, event id), whose event id the partial rows keep (a later
    micro-batch's reading at the same time is ordered by it). The struct's maximum makes the aggregation a
    sort, cheap over one micro-batch's readings and cheaper than a second job (readings of one sensor often
    share a millisecond, so batch's fixed-width order would need its tie look-up nearly every time)."""
    return WindowInputs(
        aggregates={
            "alerting_readings": F.sum(breaks_a_threshold(thresholds).cast("long")),
            "_latest": F.max(F.struct("ts", "event_id", "battery")),
        }
    )


def device_health_partial_from_windows(
    windows: list[dict[str, Any]], window_seconds: int
) -> list[dict[str, Any]]:
    """device_health's partial rows, one per per-sensor row of finer windows carrying
    `device_health_partial_inputs` (rows of one key, to be combined by the view's increment)."""
    window_us = window_seconds * 1_000_000
    partials = []
    for row in windows:
        latest = row["_latest"]
        partials.append({
            "window_start": _window_of(row["window_start"], window_us),
            "sensor_id": row["sensor_id"], "readings": row["events"], "battery_min": row["battery_min"],
            "alerting_readings": row["alerting_readings"], "last_seen": latest["ts"],
            "last_event_id": latest["event_id"], "battery_last": latest["battery"],
        })  # fmt: skip
    return partials


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _window_of(start: datetime, window_us: int) -> datetime:
    """The start of the window of `window_us` microseconds (aligned to the epoch, as Spark's) holding
    `start` (aware UTC)."""
    return start - timedelta(microseconds=(start - _EPOCH) // _MICROSECOND % window_us)


def device_health(
    events: DataFrame, window_seconds: int, input_window_seconds: int, thresholds: Thresholds
) -> DataFrame:
    """As the batch layer computes it: rolled up from per-sensor rows of the input's windows when they
    divide the view's own, else of its own."""
    finer = input_window_seconds if window_seconds % input_window_seconds == 0 else window_seconds
    windows = sensor_stats_partial(events, finer, inputs=device_health_inputs(thresholds))
    return device_health_from_windows(windows, events, window_seconds)


@dataclass(frozen=True)
class SparkView:
    """How Spark computes a view. `partial`: one micro-batch's partial rows (the speed layer's increment);
    `build`: the view of a set of events. Batch, for a view with `per_window` rows: those rows with more
    per-event values summed per row (`extra_sums`: the late events, so one aggregation counts them too) and
    the `WindowInputs` of the views finished from them, finished by `finish` (from the rows and the events);
    a view whose definition names an `input_view` is finished by its own `finish` from that view's
    per-window rows, which carry its `inputs` (when its windows are whole multiples of the input's).
    Speed, likewise: `partial_windows`, a view's partial rows carrying the `partial_inputs` of the views
    rolled up from them, and `partial_from_windows`, such a view's partial rows from those rows (as plain
    rows, several per key, which the view's increment combines)."""

    partial: Callable[[DataFrame, Parameters], DataFrame]
    build: Callable[[DataFrame, Parameters], DataFrame]
    per_window: Callable[[DataFrame, Parameters, Mapping[str, Column], WindowInputs], DataFrame] | None = None
    finish: Callable[[DataFrame, DataFrame, Parameters], DataFrame] | None = None
    inputs: Callable[[Parameters], WindowInputs] | None = None
    partial_windows: Callable[[DataFrame, Parameters, WindowInputs], DataFrame] | None = None
    partial_inputs: Callable[[Parameters], WindowInputs] | None = None
    partial_from_windows: Callable[[list[dict[str, Any]], Parameters], list[dict[str, Any]]] | None = None


def _window(view: str, parameters: Parameters) -> int:
    return VIEWS[view].window(parameters)


SPARK_VIEWS: dict[str, SparkView] = {
    "sensor_stats": SparkView(
        partial=lambda events, p: sensor_stats_partial(events, _window("sensor_stats", p)),
        build=lambda events, p: sensor_stats(events, _window("sensor_stats", p)),
        per_window=lambda events, p, extra, inputs: sensor_stats_partial(
            events, _window("sensor_stats", p), extra, inputs
        ),
        finish=lambda windows, events, p: sensor_stats_from_partial(windows),
        partial_windows=lambda events, p, inputs: sensor_stats_partial(
            events, _window("sensor_stats", p), inputs=inputs
        ),
    ),
    "location_stats": SparkView(
        partial=lambda events, p: location_stats_partial(events, _window("location_stats", p)),
        build=lambda events, p: location_stats(events, _window("location_stats", p)),
        finish=lambda windows, events, p: location_stats_from_partial(windows),
        partial_inputs=lambda p: WindowInputs(),
        partial_from_windows=lambda windows, p: location_stats_partial_from_windows(
            windows, _window("location_stats", p)
        ),
    ),
    "device_health": SparkView(
        partial=lambda events, p: device_health_partial(events, _window("device_health", p), p.thresholds),
        build=lambda events, p: device_health(
            events, _window("device_health", p), _window("sensor_stats", p), p.thresholds
        ),
        finish=lambda windows, events, p: device_health_from_windows(
            windows, events, _window("device_health", p)
        ),
        inputs=lambda p: device_health_inputs(p.thresholds),
        partial_inputs=lambda p: device_health_partial_inputs(p.thresholds),
        partial_from_windows=lambda windows, p: device_health_partial_from_windows(
            windows, _window("device_health", p)
        ),
    ),
    "activity_stats": SparkView(
        partial=lambda events, p: activity_stats_partial(events, _window("activity_stats", p)),
        build=lambda events, p: activity_stats(events, _window("activity_stats", p)),
        per_window=lambda events, p, extra, inputs: activity_stats(
            events, _window("activity_stats", p), extra
        ),
        finish=lambda windows, events, p: windows,
    ),
    "sessions": SparkView(
        partial=lambda events, p: sessions_partial(events, p.session_gap_seconds),
        build=lambda events, p: sessions(events, p.session_gap_seconds),
    ),
}
if set(SPARK_VIEWS) != set(VIEWS):  # every definition has its computation, and no computation is orphaned
    raise RuntimeError(f"views without a Spark computation, or the reverse: {set(SPARK_VIEWS) ^ set(VIEWS)}")
