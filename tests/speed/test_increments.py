"""Merging partial aggregates: windows combine column by column, sessions as intervals (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import datasketches

from lambdaflow.views import HLL_LG_K, VIEWS
from speed.increments import merge_sessions, merge_windows

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
GAP_S = 1800


def part(session_id: str, start_min: float, end_min: float, events: int, user: str = "u1") -> dict:
    return {"session_id": session_id, "user_id": user, "session_start": T0 + timedelta(minutes=start_min),
            "session_end": T0 + timedelta(minutes=end_min), "events": events, "purchases": events // 2,
            "revenue": 10.0 * events}  # fmt: skip


def spans(sessions: list[dict]) -> list[tuple]:
    return sorted((s["session_id"], s["user_id"], s["session_start"], s["session_end"], s["events"],
                   s["purchases"], s["revenue"], s["duration_s"]) for s in sessions)  # fmt: skip


def test_a_partial_session_bridging_two_stored_ones_merges_all_three():
    stored = [
        part("a", 0, 10, 3),
        {
            **part("a", 60, 70, 2),
            "session_start": T0.replace(tzinfo=None) + timedelta(minutes=60),
            "session_end": T0.replace(tzinfo=None) + timedelta(minutes=70),
        },
    ]  # stored times are naive UTC
    merged = merge_sessions(VIEWS["sessions"].increment, stored, [part("a", 35, 36, 1)], GAP_S)
    assert spans(merged) == [("a", "u1", T0, T0 + timedelta(minutes=70), 6, 2, 60.0, 4200.0)]


def test_sessions_stay_apart_at_exactly_the_gap_and_other_ids_and_users_are_kept():
    stored = [part("a", 0, 10, 3), part("a", 0, 5, 1, user="u2"), part("b", 0, 1, 1)]
    merged = merge_sessions(
        VIEWS["sessions"].increment, stored, [part("a", 40, 41, 1), part("a", -40, -30, 2)], GAP_S
    )
    assert spans(merged) == [
        ("a", "u1", T0 - timedelta(minutes=40), T0 - timedelta(minutes=30), 2, 1, 20.0, 600.0),
        ("a", "u1", T0, T0 + timedelta(minutes=10), 3, 1, 30.0, 600.0),  # 30 min apart on both sides
        ("a", "u1", T0 + timedelta(minutes=40), T0 + timedelta(minutes=41), 1, 0, 10.0, 60.0),
        ("a", "u2", T0, T0 + timedelta(minutes=5), 1, 0, 10.0, 300.0),  # same id, other user: untouched
    ]  # "b" is not in the new partials: not returned, so not rewritten


def sketch(values: list[str]) -> bytes:
    hll = datasketches.hll_sketch(HLL_LG_K)
    for value in values:
        hll.update(value)
    return hll.serialize_compact()


def test_window_partials_combine_sums_extremes_averages_and_distinct_counts():
    increment, keys = VIEWS["location_stats"].increment, VIEWS["location_stats"].keys
    stored = [{"window_start": T0.replace(tzinfo=None), "location": "lab", "events": 2,
               "temperature_sum": 40.0, "temperature_max": 21.0,
               "sensors_sketch": sketch(["s1", "s2"])}]  # fmt: skip
    new = [
        {"window_start": T0, "location": "lab", "events": 3, "temperature_sum": 90.0,
         "temperature_max": 35.0, "sensors_sketch": sketch(["s2", "s3"])},
        {"window_start": T0, "location": "hall", "events": 1, "temperature_sum": 18.0,
         "temperature_max": 18.0, "sensors_sketch": sketch(["s9"])},
    ]  # fmt: skip
    merged = {row["location"]: row for row in merge_windows(increment, keys, stored, new)}
    lab = merged["lab"]
    assert (lab["events"], lab["temperature_sum"], lab["temperature_max"], lab["sensors"]) == (
        5,
        130.0,
        35.0,
        3,
    )
    assert lab["temperature_avg"] == 26.0
    hall = merged["hall"]
    assert (hall["events"], hall["temperature_avg"], hall["sensors"]) == (1, 18.0, 1)


def test_device_health_partials_keep_the_latest_reading_by_time_then_event_id():
    """A stored partial (naive UTC, as the store gives it) against new ones (aware, from Spark): the newer
    reading's battery wins, a tie in time goes to the greater event id, and the alert share is recomputed."""
    increment, keys = VIEWS["device_health"].increment, VIEWS["device_health"].keys
    late, early = T0 + timedelta(minutes=40), T0 + timedelta(minutes=5)
    stored = [
        {"window_start": T0.replace(tzinfo=None), "sensor_id": sensor, "readings": 3, "alerting_readings": 1,
         "battery_min": 30.0, "battery_last": 35.0, "last_seen": late.replace(tzinfo=None),
         "last_event_id": "e-m"}
        for sensor in ("older", "tie", "newer")
    ]  # fmt: skip
    new = [
        {"window_start": T0, "sensor_id": "older", "readings": 1, "alerting_readings": 1, "battery_min": 10.0,
         "battery_last": 10.0, "last_seen": early, "last_event_id": "e-z"},
        {"window_start": T0, "sensor_id": "tie", "readings": 1, "alerting_readings": 0, "battery_min": 50.0,
         "battery_last": 50.0, "last_seen": late, "last_event_id": "e-n"},
        {"window_start": T0, "sensor_id": "newer", "readings": 1, "alerting_readings": 0, "battery_min": 60.0,
         "battery_last": 60.0, "last_seen": late + timedelta(seconds=1), "last_event_id": "e-a"},
    ]  # fmt: skip
    merged = {row["sensor_id"]: row for row in merge_windows(increment, keys, stored, new)}
    assert [(row["battery_last"], row["last_event_id"]) for row in merged.values()] == [
        (35.0, "e-m"), (50.0, "e-n"), (60.0, "e-a")
    ]  # fmt: skip
    assert merged["older"]["battery_min"] == 10.0 and merged["older"]["alert_share"] == 0.5
    assert merged["newer"]["readings"] == 4 and merged["newer"]["alert_share"] == 0.25
