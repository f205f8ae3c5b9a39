"""A micro-batch's partial rows (`speed.sink.partial_rows`): device_health's, rolled up from sensor_stats'
per-window rows in the same aggregation, equal a pandas ground truth of the partials, the latest reading's
event id included (the merge of later micro-batches orders by it); sensor_stats' rows are those of its own
partial."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from itertools import islice

import pandas as pd
import pytest

from ingestion.simulators import IotSimulator, simulated_clock
from lambdaflow.views import VIEWS, Parameters
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
