"""A micro-batch's partial rows (`speed.sink.partial_rows`): device_health's and location_stats', rolled up
from sensor_stats' per-window rows in the same aggregation, equal a pandas ground truth of the partials, the
latest reading's event id included (the merge of later micro-batches orders by it) and the distinct sensors
sketched with the hashes of Spark's own sketch; sensor_stats' rows are those of its own partial."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from itertools import islice

import datasketches
import pandas as pd
import pytest

from ingestion.simulators import IotSimulator, simulated_clock
from lambdaflow.views import HLL_LG_K, VIEWS, Parameters
from lambdaflow.views.spark import SPARK_VIEWS, clean
from speed.sink import partial_rows
from tests import ground_truth

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, 22, 50, tzinfo=UTC)  # crosses an hour and midnight
PARAMETERS = Parameters(window_seconds=ground_truth.WINDOW_S, session_gap_seconds=ground_truth.GAP_S)


BATTERIES = [11.0, 12.0, 13.0, 14.0]


def readings_at_one_instant() -> list[dict]:
    """Readings of one sensor sharing their time: in one 5-minute row, and across two locations (two rows);
    the greatest event id differs from the last row read and from the greatest first half of an id."""
    instant = (START + timedelta(minutes=3, microseconds=7)).isoformat().replace("+00:00", "Z")
    ids = [
        "7fffffff-ffff-4fff-bfff-ffffffffffff", "80000000-0000-4000-8000-000000000000",
        "80000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002",
    ]  # fmt: skip
    return [
        {"event_id": event_id, "ts": instant, "sensor_id": "sensor-tie", "location": location,
         "temperature": 20.0, "humidity": 40.0, "pressure": 1000.0, "battery": battery}
        for event_id, location, battery in zip(ids, ["lab", "roof", "lab", "lab"], BATTERIES, strict=True)
    ]  # fmt: skip


def device_health_partials(events: pd.DataFrame) -> pd.DataFrame:
    keys = ["window_start", "sensor_id"]
    events = events.assign(
        window_start=events["ts"].dt.floor(f"{ground_truth.HEALTH_WINDOW_S}s"),
        alerting=(events["temperature"] > ground_truth.ALERT_TEMPERATURE_C)
        | (events["battery"] < ground_truth.ALERT_BATTERY_PCT),
    )
    last = events.sort_values([*keys, "ts", "event_id"]).drop_duplicates(keys, keep="last")
    last = last[[*keys, "battery", "ts", "event_id"]].rename(
        columns={"battery": "battery_last", "ts": "last_seen", "event_id": "last_event_id"}
    )
    counts = events.groupby(keys, as_index=False).agg(
        readings=("event_id", "size"), battery_min=("battery", "min"), alerting_readings=("alerting", "sum")
    )
    return counts.merge(last, on=keys, validate="one_to_one")


def frame_of(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)[columns]
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame.sort_values(columns[:2]).reset_index(drop=True)


def test_device_health_partials_rolled_up_from_sensor_stats_windows_equal_ground_truth(spark):
    simulated = list(islice(IotSimulator(seed=9, sensors=20).events(simulated_clock(START, 2)), 8_000))
    frame = pd.DataFrame(simulated + readings_at_one_instant())
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    assert frame["event_id"].map(lambda value: str(uuid.UUID(value)) == value).all()  # the contracts' form
    events = clean(spark.createDataFrame(frame)).repartition(3).persist()
    frame["_partition"], frame["_offset"] = (
        0,
        range(len(frame)),
    )  # one copy of each: the ground truth's dedupe
    try:
        both = partial_rows(events, ["sensor_stats", "device_health"], PARAMETERS)
        alone = partial_rows(events, ["device_health"], PARAMETERS)
        own = SPARK_VIEWS["sensor_stats"].partial(events, PARAMETERS).toArrow().to_pylist()
    finally:
        events.unpersist()

    columns = list(device_health_partials(frame).columns)
    truth = device_health_partials(ground_truth.clean_events(frame)).sort_values(columns[:2])
    actual = frame_of(both["device_health"], columns)
    pd.testing.assert_frame_equal(actual, truth.reset_index(drop=True), check_dtype=False, rtol=1e-9)
    assert len(actual) == len(set(zip(actual["window_start"], actual["sensor_id"], strict=True)))
    tie = actual[actual["sensor_id"] == "sensor-tie"].iloc[0]
    assert (tie["last_event_id"], tie["battery_last"]) == ("80000000-0000-4000-8000-000000000001", 13.0)
    pd.testing.assert_frame_equal(frame_of(alone["device_health"], columns), actual)

    sensor_columns = list(own[0])
    keys = list(VIEWS["sensor_stats"].keys)
    by_key = [
        sorted(rows, key=lambda row: tuple(row[key] for key in keys)) for rows in (both["sensor_stats"], own)
    ]
    assert [list(row) for row in by_key[0]] == [sensor_columns] * len(by_key[0])
    assert by_key[0] == by_key[1]


def many_sensors_at_one_location(count: int) -> list[dict]:
    """One reading each of `count` sensors in one window: beyond the sizes a sketch keeps as a list or a set
    of hashes, so its registers are compared too."""
    ts = (START + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    return [
        {"event_id": str(uuid.UUID(int=(5 << 64) + index, version=4)), "ts": ts, "sensor_id": f"c-{index}",
         "location": "crowd", "temperature": 20.0 + index % 7, "humidity": 40.0, "pressure": 1000.0,
         "battery": 50.0}
        for index in range(count)
    ]  # fmt: skip


def estimate(sketch: bytes) -> float:
    return datasketches.hll_sketch.deserialize(sketch).get_estimate()


def union_estimate(*sketches: bytes) -> float:
    """The estimate of the union's registers alone (a large sketch updated in order estimates otherwise)."""
    union = datasketches.hll_union(HLL_LG_K)
    for sketch in sketches:
        union.update(datasketches.hll_sketch.deserialize(sketch))
    return union.get_estimate()


def same_hashes(sketch: bytes, other: bytes) -> bool:
    """Whether two sketches hold the same hashes: their union adds nothing to either."""
    both = union_estimate(sketch, other)
    return union_estimate(sketch, sketch) == both == union_estimate(other, other)


def test_location_stats_partials_rolled_up_from_sensor_stats_windows_equal_ground_truth_and_sparks_sketches(
    spark,
):
    simulated = list(islice(IotSimulator(seed=4, sensors=30).events(simulated_clock(START, 2)), 6_000))
    frame = pd.DataFrame(simulated + readings_at_one_instant() + many_sensors_at_one_location(6_000))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    events = clean(spark.createDataFrame(frame)).repartition(3).persist()
    try:
        rolled = partial_rows(events, ["location_stats"], PARAMETERS)["location_stats"]
        with_others = partial_rows(events, ["sensor_stats", "location_stats", "device_health"], PARAMETERS)
        own = SPARK_VIEWS["location_stats"].partial(events, PARAMETERS).toArrow().to_pylist()
    finally:
        events.unpersist()

    keys = list(VIEWS["location_stats"].keys)
    frame["_partition"], frame["_offset"] = 0, range(len(frame))  # the ground truth's dedupe: one copy each
    cleaned = ground_truth.clean_events(frame)
    truth = cleaned.groupby(keys, as_index=False).agg(
        events=("event_id", "size"), temperature_sum=("temperature", "sum"),
        temperature_max=("temperature", "max"), sensors=("sensor_id", "nunique"),
    )  # fmt: skip
    assert truth["sensors"].max() == 6_000
    actual = frame_of(rolled, [*keys, "events", "temperature_sum", "temperature_max", "sensors_sketch"])
    assert len(actual) == len(truth)
    sensors = actual.pop("sensors_sketch").map(estimate)
    pd.testing.assert_frame_equal(actual, truth.drop(columns="sensors").reset_index(drop=True),
                                  check_dtype=False, rtol=1e-9)  # fmt: skip
    small = truth["sensors"] < 1_000  # sketches of a few hashes count exactly, once rounded
    assert (sensors[small].round() == truth["sensors"][small]).all()
    assert abs(sensors[~small].iloc[0] / 6_000 - 1) < 0.03

    by_key = {tuple(row[key] for key in keys): row for row in own}
    for row in rolled:
        spark_sketch = by_key[tuple(row[key] for key in keys)]["sensors_sketch"]
        if estimate(spark_sketch) < 1_000:
            assert estimate(row["sensors_sketch"]) == estimate(spark_sketch)
        # a large sketch's estimate depends on how it was built (updated in order, or merged from Spark's
        # partitions' sketches), the hashes do not
        assert same_hashes(row["sensors_sketch"], spark_sketch)

    def by_location(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda row: (row["window_start"], row["location"]))

    # other views change nothing (but the order Spark sums in)
    for row, alone in zip(by_location(with_others["location_stats"]), by_location(rolled), strict=True):
        assert row["temperature_sum"] == pytest.approx(alone["temperature_sum"], rel=1e-12)
        assert same_hashes(row["sensors_sketch"], alone["sensors_sketch"])
        assert {**row, "temperature_sum": 0, "sensors_sketch": 0} == {
            **alone,
            "temperature_sum": 0,
            "sensors_sketch": 0,
        }
