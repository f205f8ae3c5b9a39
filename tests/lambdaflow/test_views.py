"""The view definitions on static DataFrames equal a ground truth computed independently with pandas.

Events come from the simulators with duplicates (same event_id at a later Kafka offset), messy categorical
strings, and out-of-order arrival; pandas recomputes every view from scratch.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from itertools import islice

import pandas as pd
import pytest

from ingestion.simulators import ActivitySimulator, IotSimulator, simulated_clock
from lambdaflow.views import VIEWS, Parameters
from lambdaflow.views.spark import SPARK_VIEWS, clean, dedupe_exact
from tests import ground_truth

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)  # crosses midnight: no window may span two days
WINDOW_S, GAP_S = ground_truth.WINDOW_S, ground_truth.GAP_S
PARAMETERS = Parameters(window_seconds=WINDOW_S, session_gap_seconds=GAP_S)


def with_faults(events: list[dict], seed: int) -> pd.DataFrame:
    """Kafka coordinates in shuffled (out-of-order) arrival, 5 % duplicates arriving later, messy strings."""
    rng = random.Random(seed)
    events = [dict(e) for e in events]
    for event in events:
        for name in ("location", "browser", "page"):
            if name in event and rng.random() < 0.2:
                event[name] = f"  {event[name].upper()} "
    duplicates = [dict(e) for e in rng.sample(events, len(events) // 20)]
    arrived = events + duplicates
    rng.shuffle(arrived[: len(events)])
    frame = pd.DataFrame(arrived)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["_topic"], frame["_partition"] = "t", 0
    frame["_offset"] = range(len(frame))
    return frame


def spark_rows(spark, frame: pd.DataFrame, view: str) -> pd.DataFrame:
    events = dedupe_exact(clean(spark.createDataFrame(frame)))
    result = SPARK_VIEWS[view].build(events, PARAMETERS).toPandas()
    for column in result.columns:
        if pd.api.types.is_datetime64_any_dtype(result[column]):
            result[column] = pd.to_datetime(result[column]).dt.tz_localize("UTC")
    return result.sort_values(list(VIEWS[view].keys)).reset_index(drop=True)


def assert_same(actual: pd.DataFrame, expected: pd.DataFrame, keys: tuple[str, ...]) -> None:
    expected = expected.sort_values(list(keys)).reset_index(drop=True)[list(actual.columns)]
    assert len(actual) == len(expected)
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, check_exact=False, rtol=1e-9)


@pytest.fixture(scope="module")
def iot() -> pd.DataFrame:
    events = list(islice(IotSimulator(seed=5, sensors=12).events(simulated_clock(START, 2)), 28_800))
    return with_faults(events, 5)


@pytest.fixture(scope="module")
def activity() -> pd.DataFrame:
    simulator = ActivitySimulator(seed=6, users=300, concurrency=60, think_s=30)
    return with_faults(list(islice(simulator.events(simulated_clock(START, 2)), 20_000)), 6)


@pytest.mark.parametrize(
    ("view", "source"),
    [
        ("sensor_stats", "iot"),
        ("location_stats", "iot"),
        ("device_health", "iot"),
        ("activity_stats", "activity"),
        ("sessions", "activity"),
    ],
)
def test_view_equals_pandas_ground_truth(spark, request, view, source):
    frame = request.getfixturevalue(source)
    truth = ground_truth.VIEWS[view](ground_truth.clean_events(frame))
    actual = spark_rows(spark, frame, view)
    assert_same(actual, truth, VIEWS[view].keys)
    if "window_start" in actual:  # aligned to UTC midnight: no window spans two days
        last_instant = actual["window_start"] + pd.Timedelta(seconds=VIEWS[view].window(PARAMETERS) - 1)
        assert (actual["window_start"].dt.floor("D") == last_instant.dt.floor("D")).all()
    if view == "activity_stats":
        assert set(actual["browser"]) == {"chrome", "firefox", "safari", "edge"}
    if view == "sessions":
        assert (actual["duration_s"] > 300).any() and (actual["purchases"] > 0).any()
    if view == "device_health":  # hourly windows, some readings breaking a threshold, some not
        assert (actual["window_start"].dt.minute == 0).all() and actual["alert_share"].between(0, 1).all()
        assert actual["alert_share"].max() > 0 and actual["alert_share"].min() < 1


@pytest.mark.parametrize("rank_every_row", [False, True], ids=["repeated-ids-only", "every-row"])
def test_dedupe_keeps_the_copy_with_the_lowest_kafka_coordinates(spark, monkeypatch, rank_every_row):
    """Copies that differ (a re-send after a producer fix, say) show which one survives: the first received
    by (topic, partition, offset), whatever order the rows come in; ids seen once pass through untouched."""
    rng = random.Random(5)
    rows = []
    for number in range(300):
        copies = rng.choice([1, 1, 1, 2, 3])
        coordinates = rng.sample([(t, p, o) for t in ("a", "b") for p in range(3) for o in range(50)], copies)
        for copy, (topic, partition, offset) in enumerate(coordinates):
            rows.append({"event_id": f"e{number}", "value": float(copy), "_topic": topic,
                         "_partition": partition, "_offset": offset + 1000 * number})  # fmt: skip
    rng.shuffle(rows)
    frame = pd.DataFrame(rows)
    truth = frame.sort_values(["_topic", "_partition", "_offset"]).drop_duplicates("event_id")
    assert frame["event_id"].duplicated().any() and (truth["value"] > 0).any(), "no copy order to tell apart"
    if rank_every_row:
        monkeypatch.setattr("lambdaflow.views.spark.REPEATED_IDS_BROADCAST_LIMIT", 0)

    kept = dedupe_exact(spark.createDataFrame(frame)).toPandas()

    def by_id(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.sort_values("event_id").reset_index(drop=True)

    pd.testing.assert_frame_equal(by_id(kept), by_id(truth), check_dtype=False)


def test_dedupe_keeps_one_copy_of_a_record_stored_twice(spark):
    """An archiver restarted on a new checkpoint re-reads the topic: the same Kafka record (same coordinates)
    lands in the lake twice. One copy stays; a later re-send of another event is still dropped."""
    frame = pd.DataFrame({
        "event_id": ["e1", "e1", "e2", "e2", "e3"],
        "value": [1.0, 1.0, 2.0, 3.0, 4.0],
        "_topic": "t", "_partition": 0,
        "_offset": [10, 10, 11, 12, 13],
    })  # fmt: skip

    kept = dedupe_exact(spark.createDataFrame(frame)).toPandas().sort_values("event_id")

    assert kept["event_id"].tolist() == ["e1", "e2", "e3"]
    assert kept["value"].tolist() == [1.0, 2.0, 4.0]


def test_windows_and_sessions_at_their_exact_boundaries(spark):
    """An event at a window's first microsecond belongs to it, one a microsecond earlier to the previous
    window; a silence of exactly the gap starts a new session, a microsecond less does not."""
    start = datetime(2026, 11, 20, 23, 55, tzinfo=UTC)
    us = pd.Timedelta(microseconds=1)
    gap = pd.Timedelta(seconds=GAP_S)
    times = [start - us, start, start + gap - us, start + 2 * gap - us, start + 2 * gap - us]
    frame = pd.DataFrame({
        "event_id": [f"e{n}" for n in range(len(times))], "ts": pd.to_datetime(times, utc=True),
        "session_id": "s1", "user_id": "u1", "event_type": "page_view", "browser": "chrome",
        "amount": float("nan"),
    })  # fmt: skip
    events = spark.createDataFrame(frame)

    windows = SPARK_VIEWS["activity_stats"].build(events, PARAMETERS).toPandas()
    starts = pd.to_datetime(windows["window_start"]).dt.tz_localize("UTC")
    assert dict(zip(starts, windows["events"], strict=True)) == {
        pd.Timestamp(start) - pd.Timedelta(seconds=WINDOW_S): 1,
        pd.Timestamp(start): 1,
        pd.Timestamp(start + gap - us).floor(f"{WINDOW_S}s"): 1,
        pd.Timestamp(start + 2 * gap - us).floor(f"{WINDOW_S}s"): 2,
    }
    sessions = SPARK_VIEWS["sessions"].build(events, PARAMETERS).toPandas().sort_values("session_start")
    # start-1us, start, start+gap-1us: each silence is shorter than the gap (one session); then exactly the
    # gap: start+2gap-1us twice is a second session
    assert sessions["events"].tolist() == [3, 2]
    assert sessions["duration_s"].tolist() == [GAP_S, 0.0]


@pytest.mark.parametrize("locations", [["lab"] * 4, ["lab", "lab", "roof", "lab"]], ids=["one", "moved"])
def test_device_health_takes_the_last_reading_by_time_then_event_id(spark, locations):
    """Readings of one hour arriving in any order: the battery of the latest by ts wins, and of two readings
    at the same instant the one with the greater event id, in the static view and in merged partials (also
    when the two are in different per-sensor rows of the finer windows the view is rolled up from)."""
    start = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    times = [start + pd.Timedelta(minutes=m) for m in (50, 10, 50, 30)]
    frame = pd.DataFrame({
        "event_id": ["e-b", "e-z", "e-a", "e-c"], "ts": pd.to_datetime(times, utc=True), "sensor_id": "s1",
        "location": locations, "temperature": [31.0, 20.0, 20.0, 20.0], "humidity": 40.0, "pressure": 1000.0,
        "battery": [50.0, 10.0, 60.0, 70.0],
    })  # fmt: skip
    [row] = (
        SPARK_VIEWS["device_health"].build(spark.createDataFrame(frame), PARAMETERS).toPandas().itertuples()
    )
    assert (row.readings, row.battery_min, row.battery_last) == (4, 10.0, 50.0)
    assert row.last_seen.tz_localize("UTC") == times[0] and row.alert_share == 0.5  # 31 °C, a battery of 10 %


def test_view_columns_are_built_once_per_session_and_arguments(spark):
    """The speed layer rebuilds its views every micro-batch; their Columns are built once (`built_once`), and
    the same Columns serve different DataFrames, each resolving them against its own rows."""
    from lambdaflow.views.spark import _sensor_stats_columns

    assert _sensor_stats_columns(WINDOW_S) is _sensor_stats_columns(WINDOW_S)
    assert _sensor_stats_columns(WINDOW_S) is not _sensor_stats_columns(2 * WINDOW_S)
    events = list(islice(IotSimulator(seed=3).events(simulated_clock(START, 50)), 400))
    first, second = (with_faults(half, seed=1) for half in (events[:150], events[150:]))
    for frame in (first, second):
        partial = SPARK_VIEWS["sensor_stats"].partial(spark.createDataFrame(frame), PARAMETERS).toPandas()
        assert partial["events"].sum() == len(frame)
        assert sorted(partial["sensor_id"].unique()) == sorted(frame["sensor_id"].unique())
