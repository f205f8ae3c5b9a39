"""Every alert rule fires on an event that breaks it and not on one exactly at the threshold."""

from datetime import UTC, datetime

import pytest

from speed.alerts import Thresholds, alert_id, reading_alerts, session_alerts

TS = datetime(2026, 11, 22, 14, 30, tzinfo=UTC)
READING = {"event_id": "e1", "sensor_id": "sensor-0001", "location": "lab", "ts": TS, "temperature": 21.0,
           "humidity": 40.0, "pressure": 1013.0, "battery": 80.0}  # fmt: skip
NO_BASELINES: dict = {}


DEFAULTS = Thresholds()


def rules(event, baselines=NO_BASELINES, thresholds=DEFAULTS):
    return {(a.rule, a.value, a.threshold) for a in reading_alerts(event, thresholds, baselines)}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("temperature", 30.0, set()),
        ("temperature", 30.01, {("temperature_high", 30.01, 30.0)}),
        ("battery", 20.0, set()),
        ("battery", 19.99, {("battery_low", 19.99, 20.0)}),
    ],
)
def test_reading_thresholds_are_strict(field, value, expected):
    assert rules({**READING, field: value}) == expected


def test_both_rules_can_fire_on_one_reading_with_distinct_deterministic_ids():
    first = reading_alerts({**READING, "temperature": 35.0, "battery": 5.0}, Thresholds(), NO_BASELINES)
    again = reading_alerts({**READING, "temperature": 35.0, "battery": 5.0}, Thresholds(), NO_BASELINES)
    assert [a.alert_id for a in first] == [a.alert_id for a in again]
    assert len({a.alert_id for a in first}) == 2
    assert first[0].alert_id == alert_id("temperature_high", "e1")
    assert '"event_id": "e1"' in first[0].event and first[0].subject == "sensor-0001"


def test_anomaly_against_the_hour_of_day_baseline():
    baselines = {("sensor-0001", 14): (20.0, 1.0)}
    assert rules({**READING, "temperature": 23.0}, baselines) == set()  # z = 3: at the threshold
    assert rules({**READING, "temperature": 23.5}, baselines) == {("temperature_anomaly", 3.5, 3.0)}
    assert rules({**READING, "temperature": 16.5}, baselines) == {("temperature_anomaly", -3.5, 3.0)}
    # no baseline for this hour, none at all, or no spread: nothing to judge against
    assert rules({**READING, "temperature": 29.0}, {("sensor-0001", 13): (20.0, 1.0)}) == set()
    assert rules({**READING, "temperature": 29.0}) == set()
    assert rules({**READING, "temperature": 29.0}, {("sensor-0001", 14): (20.0, 0.0)}) == set()


def test_session_longer_than_five_minutes():
    session = {"session_id": "s1", "user_id": "u1", "session_start": TS, "session_end": TS, "events": 9,
               "purchases": 1, "revenue": 12.5}  # fmt: skip
    assert session_alerts({**session, "duration_s": 300.0}, Thresholds()) == []
    [alert] = session_alerts({**session, "duration_s": 300.5}, Thresholds())
    assert (alert.rule, alert.subject, alert.value, alert.threshold) == ("session_long", "s1", 300.5, 300.0)
    # the session grows: same id, so the store keeps one alert for it
    assert session_alerts({**session, "duration_s": 900.0}, Thresholds())[0].alert_id == alert.alert_id


def test_thresholds_come_from_settings():
    from lambdaflow.settings import load_settings

    thresholds = Thresholds.from_settings(load_settings(alert_temperature_c=25, alert_anomaly_z=2.5))
    assert (thresholds.temperature_c, thresholds.battery_pct, thresholds.anomaly_z) == (25, 20, 2.5)
    assert rules({**READING, "temperature": 26.0}, thresholds=thresholds) == {("temperature_high", 26.0, 25)}
