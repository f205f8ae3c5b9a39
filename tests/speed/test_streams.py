"""The speed layer's view queries through a real broker and Spark into the store equal the static views and
the pandas ground truth (approximate distinct counts within 3 standard deviations of their precision)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from lambdaflow import store
from lambdaflow.views import HLL_RELATIVE_ERROR, VIEWS, Parameters
from lambdaflow.views.spark import SPARK_VIEWS, clean, dedupe_exact
from speed.progress import ProgressRecorder
from speed.queries import checkpoint_of, query_name
from speed.streams import start_speed_query
from tests import ground_truth
from tests.conftest import run_cli, settings_env
from tests.kafka_helpers import consume_all, produce_values
from tests.oracle import is_valid, parse_ts

pytestmark = pytest.mark.integration
FAULTS = ["--duplicates", "0.05", "--out-of-order", "0.1", "--malformed", "0.03"]
APPROXIMATE = {"location_stats": ["sensors"], "activity_stats": ["users"]}


@pytest.fixture
def progress_recorder(spark, settings):
    """This test's progress listener, removed afterwards so listeners do not pile up on the shared session."""
    recorder = ProgressRecorder(settings.resolved_store_url)
    spark.streams.addListener(recorder)
    yield recorder
    spark.streams.removeListener(recorder)


def wait_for_progress(settings, query: str, timeout_s: float = 10.0) -> dict:
    """The query's stream_progress row (listener events arrive asynchronously, after the query ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with store.engine(settings.resolved_store_url).connect() as connection:
            table = store.stream_progress
            row = connection.execute(select(table).where(table.c.query == query)).mappings().first()
        if (row is not None and row["max_event_ts"] is not None) or time.monotonic() > deadline:
            assert row is not None, f"no progress recorded for {query}"
            return dict(row)
        time.sleep(0.2)


def topic_frame(settings, topic: str, contract: str, count: int) -> pd.DataFrame:
    rows = []
    for record in consume_all(settings.kafka_bootstrap_servers, topic, count):
        if is_valid(contract, record.value, record.timestamp):
            rows.append(
                {**json.loads(record.value), "_partition": record.partition, "_offset": record.offset}
            )
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def store_frame(settings, view: str) -> pd.DataFrame:
    table = store.SPEED_TABLES[view]
    with store.engine(settings.resolved_store_url).connect() as connection:
        frame = pd.DataFrame(connection.execute(select(table)).mappings().all())
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].dt.tz_localize("UTC")
    columns = list(store.VIEW_COLUMNS[view])  # not the partials, nor updated_at
    return frame[columns].sort_values(list(VIEWS[view].keys)).reset_index(drop=True)


def compare(actual: pd.DataFrame, expected: pd.DataFrame, view: str) -> None:
    keys = list(VIEWS[view].keys)
    expected = expected.sort_values(keys).reset_index(drop=True)[list(actual.columns)]
    assert len(actual) == len(expected)
    approximate = APPROXIMATE.get(view, [])
    exact_columns = [c for c in actual.columns if c not in approximate]
    pd.testing.assert_frame_equal(
        actual[exact_columns], expected[exact_columns], check_dtype=False, rtol=1e-9
    )
    for column in approximate:
        error = (actual[column] - expected[column]).abs()
        bound = (expected[column] * 3 * HLL_RELATIVE_ERROR).clip(lower=1)
        assert (error <= bound).all(), (column, error.max())


@pytest.mark.parametrize(("view", "kind"), [("sensor_stats", "iot"), ("location_stats", "iot"),
                                            ("device_health", "iot"), ("activity_stats", "activity"),
                                            ("sessions", "activity")])  # fmt: skip
def test_stream_equals_static_view_and_ground_truth(spark, settings, progress_recorder, view, kind):
    """Over several micro-batches (1,000 records each), so stored and new partial aggregates are merged."""
    settings = settings.model_copy(update={"max_records_per_trigger": 1000})
    topic = settings.topic_iot if kind == "iot" else settings.topic_activity
    contract = "iot_sensors" if kind == "iot" else "user_activity"
    run_cli(
        ["produce", kind, "--count", "4000", "--rate", "0", "--seed", "11", *FAULTS], settings_env(settings)
    )
    query = start_speed_query(spark, settings, contract, (view,), once=True)
    query.awaitTermination()
    assert query.exception() is None

    streamed = store_frame(settings, view)
    frame = topic_frame(settings, topic, contract, 4000)
    truth = ground_truth.VIEWS[view](ground_truth.clean_events(frame))
    compare(streamed, truth, view)

    static_events = dedupe_exact(clean(spark.createDataFrame(frame.drop(columns=["_partition", "_offset"]))))
    static = SPARK_VIEWS[view].build(static_events, Parameters.from_settings(settings)).toPandas()
    for column in static.columns:
        if pd.api.types.is_datetime64_any_dtype(static[column]):
            static[column] = pd.to_datetime(static[column]).dt.tz_localize("UTC")
    compare(streamed, static, view)

    row = wait_for_progress(settings, query_name(contract))
    assert row["batch_id"] >= 3, "the events fit one micro-batch: no merge was tested"
    assert row["max_event_ts"] is not None and row["late_rows"] == 0
    records = consume_all(settings.kafka_bootstrap_servers, topic, 4000)
    assert row["invalid_rows"] == sum(not is_valid(contract, r.value, r.timestamp) for r in records) > 0


def _readings(start: datetime, count: int, step_s: float) -> list[bytes]:
    return [
        json.dumps({
            "event_id": str(uuid.uuid4()), "sensor_id": f"s-{i % 5}", "location": "lab",
            "ts": (start + timedelta(seconds=i * step_s)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "temperature": 20.0 + i % 7, "humidity": 40.0, "pressure": 1000.0, "battery": 90.0 - i % 3,
        }).encode()
        for i in range(count)
    ]  # fmt: skip


def test_events_behind_the_watermark_are_dropped_and_counted(spark, settings, progress_recorder):
    """Three runs from one checkpoint: events at T, events at T+30 min (the watermark moves to T+20 min), then
    20 events at T (behind it: dropped, counted) and 10 at T+31 min (kept)."""
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    stages = [
        _readings(start, 50, 1.0),
        _readings(start + timedelta(minutes=30), 50, 1.0),
        _readings(start + timedelta(seconds=5), 20, 1.0) + _readings(start + timedelta(minutes=31), 10, 1.0),
    ]
    for values in stages:
        produce_values(settings.kafka_bootstrap_servers, settings.topic_iot, values)
        query = start_speed_query(spark, settings, "iot_sensors", ("sensor_stats",), once=True)
        query.awaitTermination()
        assert query.exception() is None

    frame = topic_frame(settings, settings.topic_iot, "iot_sensors", 130)
    on_time = frame[~frame["event_id"].isin({json.loads(v)["event_id"] for v in stages[2][:20]})]
    truth = ground_truth.sensor_stats(ground_truth.clean_events(on_time))
    compare(store_frame(settings, "sensor_stats"), truth, "sensor_stats")
    deadline = time.monotonic() + 10
    while (row := wait_for_progress(settings, "speed_iot_sensors"))["late_rows"] < 20:
        assert time.monotonic() < deadline, f"late rows counted: {row['late_rows']}, expected 20"
        time.sleep(0.2)
    assert row["late_rows"] == 20 and row["invalid_rows"] == 0


def _copies(values: list[bytes], moved_by: timedelta) -> list[bytes]:
    """The same events (same ids) stamped `moved_by` later."""
    copies = []
    for value in values:
        event = json.loads(value)
        ts = parse_ts(event["ts"]) + moved_by
        copies.append(json.dumps({**event, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z")}).encode())
    return copies


def test_an_event_id_is_held_until_the_watermark_passes_its_time_plus_the_delay(spark, settings):
    """Spark's dedupe-within-watermark rule, through the timer-expired state: ids seen at T (watermark 10 min)
    are repeats at T+5 min, still held when the watermark reaches T+5 min, and count again once the watermark
    passes T+10 min. One checkpoint, one run per stage."""
    assert settings.watermark_seconds == 600
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    first = _readings(start, 20, 1.0)
    stages = [
        first,
        _copies(first[:10], timedelta(minutes=5)),  # repeats: dropped
        _readings(start + timedelta(minutes=15), 10, 1.0) + _copies(first[10:], timedelta(minutes=15)),
        _readings(start + timedelta(minutes=21), 10, 1.0),  # the watermark passes T+10 min (+20 s)
        _copies(first[:10], timedelta(minutes=22)),  # forgotten: they count again
    ]
    for values in stages:
        produce_values(settings.kafka_bootstrap_servers, settings.topic_iot, values)
        query = start_speed_query(spark, settings, "iot_sensors", ("sensor_stats",), once=True)
        query.awaitTermination()
        assert query.exception() is None

    counted = [*stages[0], *stages[2][:10], *stages[3], *stages[4]]  # stage 2 and stage 3's copies: repeats
    frame = pd.DataFrame([json.loads(value) for value in counted])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    compare(
        store_frame(settings, "sensor_stats"), ground_truth.sensor_stats(clean_frame(frame)), "sensor_stats"
    )


def test_the_dedupe_state_holds_exactly_the_ids_not_yet_expired(spark, settings):
    """Read back from the checkpoint (Spark's state data source): after the watermark passes T+10 min and
    the micro-batch after that runs the scans due, the ids seen at T are gone and every later id is held
    with its expiry, its event time plus the 10-minute delay."""
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    stages = [
        _readings(start, 40, 1.0),
        _readings(start + timedelta(minutes=30), 20, 1.0),  # the watermark moves to T+20 min
        _readings(start + timedelta(minutes=31), 20, 1.0),  # its micro-batch runs the scans due by T+20 min
    ]
    for values in stages:
        produce_values(settings.kafka_bootstrap_servers, settings.topic_iot, values)
        query = start_speed_query(spark, settings, "iot_sensors", ("sensor_stats",), once=True)
        query.awaitTermination()
        assert query.exception() is None

    state = (
        spark.read.format("statestore")
        .option("stateVarName", "expiry_of_id")
        .load(str(checkpoint_of(settings, "iot_sensors", ("sensor_stats",))))
        .selectExpr("user_map_key.value AS event_id", "user_map_value.value AS expiry_ms")
        .toPandas()
    )
    expected = {}
    for value in [*stages[1], *stages[2]]:
        event = json.loads(value)
        expected[event["event_id"]] = int((parse_ts(event["ts"]) + timedelta(minutes=10)).timestamp() * 1000)
    assert dict(zip(state["event_id"], state["expiry_ms"], strict=True)) == expected


def clean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The ground truth's cleaning without its dedupe (the events are distinct or meant to count twice)."""
    numbers = range(len(frame))
    return ground_truth.clean_events(
        frame.assign(event_id=[str(i) for i in numbers], _partition=0, _offset=numbers)
    )


def test_a_restarted_query_adds_new_events_to_the_stored_aggregates(spark, settings):
    env = settings_env(settings)
    for _ in range(2):  # two producer runs, the query restarted from its checkpoint in between
        run_cli(["produce", "iot", "--count", "1500", "--rate", "0", "--duplicates", "0.05"], env)
        query = start_speed_query(spark, settings, "iot_sensors", ("sensor_stats",), once=True)
        query.awaitTermination()
        assert query.exception() is None
    truth = ground_truth.sensor_stats(
        ground_truth.clean_events(topic_frame(settings, settings.topic_iot, "iot_sensors", 3000))
    )
    compare(store_frame(settings, "sensor_stats"), truth, "sensor_stats")


def test_a_new_checkpoint_rebuilds_the_views_instead_of_adding_to_them(spark, settings):
    """Deleting a checkpoint replays the topic from its start; the stored views must not count it twice."""
    run_cli(
        ["produce", "iot", "--count", "1500", "--rate", "0", "--duplicates", "0.05"], settings_env(settings)
    )
    for _ in range(2):
        query = start_speed_query(spark, settings, "iot_sensors", ("sensor_stats",), once=True)
        query.awaitTermination()
        assert query.exception() is None
        shutil.rmtree(checkpoint_of(settings, "iot_sensors", ("sensor_stats",)))
    truth = ground_truth.sensor_stats(
        ground_truth.clean_events(topic_frame(settings, settings.topic_iot, "iot_sensors", 1500))
    )
    compare(store_frame(settings, "sensor_stats"), truth, "sensor_stats")
