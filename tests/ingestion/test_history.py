"""The demo's simulated history: whole UTC days before today, the same number of events each day at
historical event times, the live producer's fault mix, reproducible (so a re-send repeats the same
event_ids), and a marker per topic that is whole or absent."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest

from ingestion.faults import Faults
from ingestion.history import (
    EVENTS_PER_SECOND,
    HistoryPlan,
    history_events,
    history_records,
    marker_path,
    plan_history,
    read_marker,
    write_marker,
)
from lambdaflow.contracts import validate_record

TODAY = date(2026, 12, 3)


def test_the_plan_is_the_whole_days_before_today():
    plan = plan_history("iot", TODAY, 3, send_seconds=60)
    assert plan.day_list == [date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 2)]
    assert plan.start == datetime(2026, 11, 30, tzinfo=UTC)
    assert plan.end == datetime(2026, 12, 3, tzinfo=UTC)
    assert plan.events_per_day == EVENTS_PER_SECOND["iot"] * 86_400
    assert plan.events == 3 * plan.events_per_day
    assert plan.send_rate == pytest.approx(plan.events / 60)
    with pytest.raises(ValueError, match="at least one day"):
        plan_history("iot", TODAY, 0)
    with pytest.raises(ValueError, match="no history"):
        plan_history("clicks", TODAY, 1)


@pytest.mark.parametrize("kind", ["iot", "activity"])
def test_each_day_holds_the_same_number_of_valid_events_spread_over_the_day(kind):
    plan = plan_history(kind, TODAY, 2)
    events = list(history_events(plan))
    assert len(events) == plan.events
    contract = "iot_sensors" if kind == "iot" else "user_activity"
    now = datetime.now(UTC)
    reasons = {validate_record(contract, orjson.dumps(e), now, timedelta(0))[1] for e in events[::50]}
    assert reasons == {None}
    times = [datetime.fromisoformat(event["ts"]) for event in events]
    assert times == sorted(times) and times[0] == plan.start and times[-1] < plan.end
    per_day = Counter(moment.date() for moment in times)
    assert per_day == dict.fromkeys(plan.day_list, plan.events_per_day)
    per_hour = Counter(moment.replace(minute=0, second=0, microsecond=0) for moment in times)
    assert len(per_hour) == 24 * plan.days  # no hour of a day is left empty
    assert len({event["event_id"] for event in events}) == len(events)


def test_the_history_is_reproducible_and_differs_by_first_day():
    plan = plan_history("activity", TODAY, 1)
    first = [event["event_id"] for event in history_events(plan)][:100]
    assert first == [event["event_id"] for event in history_events(plan)][:100]
    other = [event["event_id"] for event in history_events(plan_history("activity", TODAY, 2))][:100]
    assert not set(first) & set(other)


def test_records_carry_the_live_fault_mix_at_historical_times():
    plan = plan_history("iot", TODAY, 1)
    faults = Faults(duplicates=0.005, late=0.005, out_of_order=0.02, malformed=0.002)
    records, counts = history_records(plan, faults)
    values = [value for _, value in records]
    assert counts["valid"] + counts["malformed"] == plan.events
    assert len(values) == plan.events + counts["duplicate"]
    for name in ("duplicate", "late", "out_of_order", "malformed"):
        assert counts[name] > 0, name
    parsed = []
    for value in values:
        try:
            parsed.append(orjson.loads(value))
        except orjson.JSONDecodeError:
            continue
    times = [datetime.fromisoformat(e["ts"]) for e in parsed if isinstance(e, dict) and "ts" in e]
    in_plan = [moment for moment in times if plan.start <= moment < plan.end]
    # late events move up to the watermark + 30 min back, and `future_ts` malformed ones ahead of now
    assert len(in_plan) >= plan.events - counts["late"] - counts["malformed"]
    assert min(times) >= plan.start - faults.watermark - timedelta(minutes=30)


def test_the_marker_is_whole_or_absent(tmp_path):
    plan = HistoryPlan("iot", date(2026, 11, 30), 3)
    assert read_marker(tmp_path, "iot_sensors") is None
    path = write_marker(tmp_path, "iot_sensors", plan, 130_214)
    assert path == marker_path(tmp_path, "iot_sensors") and path.parent == tmp_path.resolve() / "history"
    marker = read_marker(tmp_path, "iot_sensors")
    assert (marker.topic, marker.first_day, marker.days, marker.records) == ("iot_sensors", plan.first_day, 3,
                                                                            130_214)  # fmt: skip
    assert marker.sent_at.tzinfo is not None
    assert read_marker(tmp_path, "user_activity") is None
    assert [p.name for p in path.parent.iterdir()] == ["iot_sensors.json"]
