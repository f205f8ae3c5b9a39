"""A day recomputed from a lake built by the real archiver equals a pandas ground truth computed from the
topics (duplicates, late, out-of-order and malformed records included), and publishing it is one idempotent
transaction that advances the horizon and retires the speed rows it covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from batch.publish import publish_batch_day
from batch.recompute import recompute_day
from ingestion.archiver import start_archiver
from lambdaflow import store
from lambdaflow.views import VIEWS
from serving import merge
from tests import ground_truth
from tests.conftest import run_cli, settings_env
from tests.kafka_helpers import consume_all
from tests.oracle import is_valid, parse_ts

pytestmark = pytest.mark.integration
FAULTS = ["--duplicates", "0.05", "--late", "0.05", "--out-of-order", "0.1", "--malformed", "0.03"]
COUNT = 4000


def topic_events(settings, topic: str, contract: str, count: int = COUNT) -> pd.DataFrame:
    """The valid events of a topic as the oracle sees them, with their Kafka coordinates and timestamp."""
    import json

    rows = [
        {**json.loads(r.value), "_partition": r.partition, "_offset": r.offset, "_kafka_ts": r.timestamp}
        for r in consume_all(settings.kafka_bootstrap_servers, topic, count)
        if is_valid(contract, r.value, r.timestamp)
    ]
    frame = pd.DataFrame(rows)
    frame["ts"] = frame["ts"].map(parse_ts)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["_kafka_ts"] = pd.to_datetime(frame["_kafka_ts"], utc=True)
    return frame


def store_rows(engine, table, drop: tuple[str, ...] = ("day",)) -> pd.DataFrame:
    with engine.connect() as connection:
        frame = pd.DataFrame(connection.execute(select(table)).mappings().all())
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].dt.tz_localize("UTC")
    return frame.drop(columns=[c for c in drop if c in frame.columns])


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    assert len(actual) == len(expected) > 0
    actual = actual.sort_values(keys).reset_index(drop=True)
    expected = expected.sort_values(keys).reset_index(drop=True)[list(actual.columns)]
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, rtol=1e-9)


def dump(engine) -> dict[str, list]:
    """Every row of every table but the speed layer's progress, in key order: the store's content."""
    with engine.connect() as connection:
        return {
            table.name: sorted(map(tuple, connection.execute(select(table)).all()), key=repr)
            for table in store.metadata.sorted_tables
        }


def test_recomputed_day_equals_ground_truth_and_publishing_is_idempotent(spark, settings):
    env = settings_env(settings)
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", str(COUNT), "--rate", "0", "--seed", "21", *FAULTS], env)
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()
    assert archiver.exception() is None

    frames = {
        "iot_sensors": topic_events(settings, settings.topic_iot, "iot_sensors"),
        "user_activity": topic_events(settings, settings.topic_activity, "user_activity"),
    }

    def late(frame: pd.DataFrame) -> pd.Series:
        """Events that reached Kafka more than the watermark after their time."""
        return (frame["_kafka_ts"] - frame["ts"]) > timedelta(seconds=settings.watermark_seconds)

    iot = frames["iot_sensors"]
    # the day the late events fall on: the events' own day, but in the ~40 minutes after midnight UTC the late
    # ones (10-40 minutes behind) are the day before, alone
    day = iot["ts"][late(iot)].dt.date.mode()[0]
    events = {c: ground_truth.clean_events(f[f["ts"].dt.date == day]) for c, f in frames.items()}
    late_counts = {c: int(late(e).sum()) for c, e in events.items()}
    assert late_counts["iot_sensors"] > 0, "no late event in the sample: the late_events check proves nothing"

    engine = store.engine(settings.resolved_store_url)
    before = datetime.combine(day, datetime.min.time())
    after = before + timedelta(days=1)
    speed_row = {"sensor_id": "s-old", "location": "x", "events": 1, "updated_at": datetime.now(UTC)}
    store.upsert(engine, store.SPEED_TABLES["sensor_stats"], [
        {**speed_row, "window_start": before}, {**speed_row, "window_start": after}])  # fmt: skip

    result = recompute_day(spark, settings, day)
    assert result.rows["sensor_stats"] > 0
    assert publish_batch_day(settings, day, force=True) == after  # the sampled day need not be complete
    first = dump(engine)

    for name, view in VIEWS.items():
        truth = ground_truth.VIEWS[name](events[view.contract])
        assert_same(store_rows(engine, store.BATCH_TABLES[name]), truth, list(view.keys))

    late_truth = pd.concat([
        e.assign(late=late(e), topic=topic)
        .groupby(["window_start", "topic"], as_index=False)
        .agg(events=("event_id", "size"), late_events=("late", "sum"))
        for e, topic in ((events["iot_sensors"], settings.topic_iot),
                         (events["user_activity"], settings.topic_activity))
    ])  # fmt: skip
    assert_same(store_rows(engine, store.batch_late_events), late_truth, ["window_start", "topic"])
    assert store_rows(engine, store.batch_late_events)["late_events"].sum() == sum(late_counts.values())

    # the 7 days ending with D: a run just after midnight has readings of the day before in the lake
    week = ground_truth.clean_events(iot[iot["ts"].dt.date.between(day - timedelta(days=6), day)])
    readings = week.assign(hour_of_day=lambda f: f["ts"].dt.hour)
    baseline_truth = readings.groupby(["sensor_id", "hour_of_day"], as_index=False).agg(
        temperature_mean=("temperature", "mean"), temperature_std=("temperature", "std"),
        samples=("event_id", "size"),
    ).fillna({"temperature_std": 0.0})  # fmt: skip
    assert_same(store_rows(engine, store.baselines, drop=("computed_for",)), baseline_truth,
                ["sensor_id", "hour_of_day"])  # fmt: skip

    for name in VIEWS:
        assert merge.horizon(engine, name) == after
    speed = store_rows(engine, store.SPEED_TABLES["sensor_stats"])
    assert list(speed["window_start"].dt.tz_convert(None)) == [after], "speed rows before the horizon stay"

    recompute_day(spark, settings, day)
    publish_batch_day(settings, day, force=True)
    assert dump(engine) == first, "re-running a day changed the store"

    earlier = day - timedelta(days=1)  # an older day (nothing in the lake) never moves the horizon back
    recompute_day(spark, settings, earlier)
    publish_batch_day(settings, earlier, force=True)
    assert all(merge.horizon(engine, name) == after for name in VIEWS)
