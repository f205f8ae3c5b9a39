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
from lambdaflow.views import VIEWS, clean, dedupe_exact

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)  # crosses midnight: no window may span two days
WINDOW_S, GAP_S = 300, 1800


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


def truth_clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.sort_values("_offset").drop_duplicates("event_id", keep="first").copy()
    for name in ("location", "browser", "page"):
        if name in frame:
            frame[name] = frame[name].str.strip().str.lower()
    frame["window_start"] = frame["ts"].dt.floor(f"{WINDOW_S}s")
    return frame


def spark_rows(spark, frame: pd.DataFrame, view: str) -> pd.DataFrame:
    events = dedupe_exact(clean(spark.createDataFrame(frame)))
    size = GAP_S if view == "sessions" else WINDOW_S
    result = VIEWS[view].build(events, size, exact=True).toPandas()
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


def test_sensor_stats(spark, iot):
    truth = truth_clean(iot).groupby(["window_start", "sensor_id", "location"], as_index=False).agg(
        events=("event_id", "size"), temperature_avg=("temperature", "mean"),
        temperature_min=("temperature", "min"), temperature_max=("temperature", "max"),
        humidity_avg=("humidity", "mean"), pressure_avg=("pressure", "mean"), battery_min=("battery", "min"),
    )  # fmt: skip
    actual = spark_rows(spark, iot, "sensor_stats")
    assert_same(actual, truth, VIEWS["sensor_stats"].keys)
    assert (
        actual["window_start"].dt.floor("D") == (actual["window_start"] + pd.Timedelta("299s")).dt.floor("D")
    ).all()
    assert actual["location"].str.match(r"^[a-z0-9-]+$").all()


def test_location_stats(spark, iot):
    truth = truth_clean(iot).groupby(["window_start", "location"], as_index=False).agg(
        events=("event_id", "size"), sensors=("sensor_id", "nunique"),
        temperature_avg=("temperature", "mean"), temperature_max=("temperature", "max"),
    )  # fmt: skip
    assert_same(spark_rows(spark, iot, "location_stats"), truth, VIEWS["location_stats"].keys)


def test_activity_stats(spark, activity):
    clean_events = truth_clean(activity)
    clean_events["amount"] = clean_events["amount"].fillna(0.0)
    truth = clean_events.groupby(["window_start", "event_type", "browser"], as_index=False).agg(
        events=("event_id", "size"), users=("user_id", "nunique"), revenue=("amount", "sum"),
    )  # fmt: skip
    actual = spark_rows(spark, activity, "activity_stats")
    assert_same(actual, truth, VIEWS["activity_stats"].keys)
    assert set(actual["browser"]) == {"chrome", "firefox", "safari", "edge"}


def test_sessions(spark, activity):
    events = truth_clean(activity).sort_values(["session_id", "ts"]).copy()
    events["amount"] = events["amount"].fillna(0.0)
    gap = events.groupby("session_id")["ts"].diff() >= pd.Timedelta(seconds=GAP_S)
    events["burst"] = gap.groupby(events["session_id"]).cumsum()
    truth = events.groupby(["session_id", "user_id", "burst"], as_index=False).agg(
        session_start=("ts", "min"), session_end=("ts", "max"), events=("event_id", "size"),
        purchases=("event_type", lambda s: int((s == "purchase").sum())), revenue=("amount", "sum"),
    )  # fmt: skip
    truth["duration_s"] = (truth["session_end"] - truth["session_start"]).dt.total_seconds()
    actual = spark_rows(spark, activity, "sessions")
    assert_same(actual, truth, VIEWS["sessions"].keys)
    assert (actual["duration_s"] > 300).any() and (actual["purchases"] > 0).any()
