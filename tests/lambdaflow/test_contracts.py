from datetime import UTC, datetime, timedelta

import orjson
import pytest

from lambdaflow.contracts import format_ts, validate_record

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LIMIT = timedelta(minutes=5)
IOT = {
    "event_id": "0b5bd0a4-5d1f-4c1e-9f3a-1d2b3c4d5e6f",
    "sensor_id": "sensor-0001",
    "location": "greenhouse",
    "ts": "2026-11-22T11:59:59.123Z",
    "temperature": 21.5,
    "humidity": 40,
    "pressure": 1013.25,
    "battery": 80.0,
}
ACTIVITY = {
    "event_id": "9b5bd0a4-5d1f-4c1e-9f3a-1d2b3c4d5e6f",
    "user_id": "user-00001",
    "session_id": "s-1",
    "ts": "2026-11-22T11:59:59.123Z",
    "event_type": "purchase",
    "page": "/checkout",
    "browser": "Firefox",
    "amount": 12.5,
}


def check(contract: str, event: object) -> str | None:
    value = event if isinstance(event, bytes) else orjson.dumps(event)
    return validate_record(contract, value, NOW, LIMIT)[1]


def test_valid_events_pass_and_keep_their_values():
    event, reason = validate_record("iot_sensors", orjson.dumps(IOT), NOW, LIMIT)
    assert reason is None
    assert event.model_dump() == {
        **IOT,
        "humidity": 40.0,
        "ts": datetime(2026, 11, 22, 11, 59, 59, 123000, UTC),
    }
    assert check("user_activity", ACTIVITY) is None
    assert check("user_activity", {**ACTIVITY, "event_type": "login", "amount": None}) is None
    assert check("iot_sensors", {**IOT, "unknown_extra_field": 1}) is None  # forward compatible


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [("temperature", -50, 100), ("humidity", 0, 100), ("pressure", 800, 1200), ("battery", 0, 100)],
)
def test_iot_ranges_are_inclusive(field, low, high):
    assert check("iot_sensors", {**IOT, field: low}) is None
    assert check("iot_sensors", {**IOT, field: high}) is None
    assert check("iot_sensors", {**IOT, field: low - 0.01}).startswith(f"{field}:")
    assert check("iot_sensors", {**IOT, field: high + 0.01}).startswith(f"{field}:")


@pytest.mark.parametrize(
    ("contract", "value", "reason"),
    [
        ("iot_sensors", b"{not json", "invalid JSON"),
        ("iot_sensors", b"", "invalid JSON"),
        ("iot_sensors", b"[1, 2]", "not a JSON object"),
        ("iot_sensors", {k: v for k, v in IOT.items() if k != "sensor_id"}, "sensor_id: missing"),
        ("iot_sensors", {**IOT, "temperature": "21.5"}, "temperature: must be a JSON number"),
        ("iot_sensors", {**IOT, "battery": True}, "battery: must be a JSON number"),
        ("iot_sensors", {**IOT, "event_id": "42"}, "event_id: not a UUID"),
        ("iot_sensors", {**IOT, "sensor_id": ""}, "sensor_id:"),
        ("iot_sensors", {**IOT, "ts": "2026-11-22 11:59"}, "ts: not an ISO-8601"),
        ("iot_sensors", {**IOT, "ts": "2026-11-22T13:59:59.123+02:00"}, "ts: must be UTC"),
        ("iot_sensors", {**IOT, "ts": "2026-11-22T11:59:59.123"}, "ts: must be UTC"),
        ("user_activity", {**ACTIVITY, "event_type": "teleport"}, "event_type:"),
        ("user_activity", {**ACTIVITY, "amount": None}, "amount: required on purchase"),
        ("user_activity", {**ACTIVITY, "event_type": "page_view"}, "amount: only on purchase"),
        ("user_activity", {**ACTIVITY, "amount": -0.01}, "amount:"),
    ],
)
def test_contract_breaks_give_a_reason(contract, value, reason):
    assert check(contract, value).startswith(reason)


def test_tombstones_are_invalid():
    assert validate_record("iot_sensors", None, NOW, LIMIT) == (None, "empty value (tombstone)")


def test_future_event_time_is_judged_against_ingest_time():
    at_limit = format_ts(NOW + LIMIT)
    beyond = format_ts(NOW + LIMIT + timedelta(milliseconds=1))
    assert check("iot_sensors", {**IOT, "ts": at_limit}) is None
    assert check("iot_sensors", {**IOT, "ts": beyond}).startswith("ts: 300 s ahead of ingest time")
    # old events are fine: they are late, not invalid
    assert check("iot_sensors", {**IOT, "ts": "2020-01-01T00:00:00.000Z"}) is None


def test_format_ts_is_iso_utc_with_milliseconds():
    from datetime import timezone

    assert format_ts(datetime(2026, 1, 2, 3, 4, 5, 678901, UTC)) == "2026-01-02T03:04:05.678Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_ts(datetime(2026, 1, 2, 5, 4, 5, 1000, plus_two)) == "2026-01-02T03:04:05.001Z"
