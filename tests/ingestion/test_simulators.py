"""The simulators produce valid, realistic data; the fault injector injects exactly what it counts."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import islice

import orjson

from ingestion.faults import FaultInjector, Faults
from ingestion.simulators import ActivitySimulator, IotSimulator, simulated_clock
from tests.oracle import is_valid, parse_ts

DAY = datetime(2026, 11, 20, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)  # ingest time for validity checks of simulated history


def iot_day(per_second: float = 2.0) -> list[dict]:
    return list(islice(IotSimulator(seed=1, sensors=20).events(simulated_clock(DAY, per_second)), 172_800))


def test_iot_readings_are_valid_and_cover_the_alert_cases():
    events = iot_day()
    assert all(is_valid("iot_sensors", orjson.dumps(e), parse_ts(e["ts"])) for e in events[:20_000])
    assert any(e["temperature"] > 30 for e in events), "no hot spell"
    assert any(e["battery"] < 20 for e in events), "no battery under 20 %"
    # a daily cycle: the warmest hour of a location is ~6 hours after 09:00 UTC, the coldest ~18 hours after
    by_hour = defaultdict(list)
    for event in events:
        if event["location"] == "rooftop":
            by_hour[parse_ts(event["ts"]).hour].append(event["temperature"])
    means = {hour: sum(v) / len(v) for hour, v in by_hour.items()}
    assert means[15] - means[3] > 10


def test_same_seed_same_events():
    first = list(islice(IotSimulator(seed=9).events(simulated_clock(DAY, 10)), 500))
    again = list(islice(IotSimulator(seed=9).events(simulated_clock(DAY, 10)), 500))
    assert first == again
    assert len({e["event_id"] for e in first}) == 500


def test_sessions_have_varied_lengths_and_purchases():
    simulator = ActivitySimulator(seed=2, concurrency=100, think_s=20)
    events = list(islice(simulator.events(simulated_clock(DAY, 5)), 30_000))
    assert all(is_valid("user_activity", orjson.dumps(e), FAR_FUTURE) for e in events)
    sessions = defaultdict(list)
    for event in events:
        sessions[event["session_id"]].append(event)
    complete = [
        s for s in sessions.values() if s[0]["event_type"] == "login" and s[-1]["event_type"] == "logout"
    ]
    durations = [(parse_ts(s[-1]["ts"]) - parse_ts(s[0]["ts"])).total_seconds() for s in complete]
    assert len(complete) > 500
    assert sum(d > 300 for d in durations) > 0.1 * len(durations), "too few sessions over 5 minutes"
    assert sum(d < 120 for d in durations) > 0.1 * len(durations), "too few short sessions"
    purchases = [e for e in events if e["event_type"] == "purchase"]
    assert purchases and all(e["amount"] > 0 for e in purchases)
    assert all(len({e["user_id"] for e in s}) == 1 for s in sessions.values())


def test_fault_injector_counts_what_it_injects():
    faults = Faults(
        duplicates=0.05, late=0.05, out_of_order=0.1, malformed=0.05, watermark=timedelta(minutes=10)
    )
    injector = FaultInjector(faults, seed=4)
    simulator = IotSimulator(seed=4)
    clean = {}
    now = datetime.now(UTC)
    stream = injector.apply(simulator.events(lambda: now), simulator.key)
    records = [value for _key, value in islice(stream, 20_000)]
    counts = injector.counts
    assert len(records) == 20_000
    assert counts["valid"] + counts["malformed"] + counts["duplicate"] == 20_000
    valid = [v for v in records if is_valid("iot_sensors", v, now)]
    assert len(records) - len(valid) == counts["malformed"]
    for name, fraction in (("malformed", 0.05), ("late", 0.05), ("out_of_order", 0.1), ("duplicate", 0.05)):
        assert abs(counts[name] / 20_000 - fraction) < 0.015, name
    for value in valid:
        event = orjson.loads(value)
        clean.setdefault(event["event_id"], []).append(parse_ts(event["ts"]))
    duplicates = sum(len(times) - 1 for times in clean.values())
    assert duplicates == counts["duplicate"]
    lateness = [now - times[0] for times in clean.values()]
    assert sum(lag > timedelta(minutes=10) for lag in lateness) == counts["late"]
    in_watermark = [timedelta(seconds=5) <= lag <= timedelta(minutes=5) for lag in lateness]
    assert sum(in_watermark) == counts["out_of_order"]
    assert set(k.split(".")[1] for k in counts if k.startswith("malformed.")) == {
        "not_json", "not_object", "missing_field", "out_of_range", "wrong_type", "future_ts", "non_utc_ts",
        "bad_enum",
    }  # fmt: skip
