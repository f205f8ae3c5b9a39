"""The views recomputed with plain pandas, independently of lambdaflow.views: the tests' ground truth."""

from __future__ import annotations

import pandas as pd

WINDOW_S, GAP_S = 300, 1800
HEALTH_WINDOW_S = 3600
# The threshold alert rules at the default settings: temperature above 30 °C, battery below 20 %.
ALERT_TEMPERATURE_C, ALERT_BATTERY_PCT = 30.0, 20.0


def clean_events(frame: pd.DataFrame) -> pd.DataFrame:
    """First copy of each event_id (lowest Kafka offset), categories trimmed and lower-cased."""
    frame = frame.sort_values(["_partition", "_offset"]).drop_duplicates("event_id", keep="first").copy()
    for name in ("location", "browser", "page"):
        if name in frame:
            frame[name] = frame[name].str.strip().str.lower()
    frame["window_start"] = frame["ts"].dt.floor(f"{WINDOW_S}s")
    if "event_type" in frame:  # user activity: amount is absent unless some event is a purchase
        frame["amount"] = frame["amount"].fillna(0.0) if "amount" in frame else 0.0
    return frame


def sensor_stats(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby(["window_start", "sensor_id", "location"], as_index=False).agg(
        events=("event_id", "size"), temperature_avg=("temperature", "mean"),
        temperature_min=("temperature", "min"), temperature_max=("temperature", "max"),
        humidity_avg=("humidity", "mean"), pressure_avg=("pressure", "mean"), battery_min=("battery", "min"),
    )  # fmt: skip


def location_stats(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby(["window_start", "location"], as_index=False).agg(
        events=("event_id", "size"), sensors=("sensor_id", "nunique"),
        temperature_avg=("temperature", "mean"), temperature_max=("temperature", "max"),
    )  # fmt: skip


def activity_stats(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby(["window_start", "event_type", "browser"], as_index=False).agg(
        events=("event_id", "size"), users=("user_id", "nunique"), revenue=("amount", "sum"),
    )  # fmt: skip


def sessions(events: pd.DataFrame) -> pd.DataFrame:
    events = events.sort_values(["session_id", "ts"]).copy()
    gap = events.groupby("session_id")["ts"].diff() >= pd.Timedelta(seconds=GAP_S)
    events["burst"] = gap.groupby(events["session_id"]).cumsum()
    truth = events.groupby(["session_id", "user_id", "burst"], as_index=False).agg(
        session_start=("ts", "min"), session_end=("ts", "max"), events=("event_id", "size"),
        purchases=("event_type", lambda s: int((s == "purchase").sum())), revenue=("amount", "sum"),
    )  # fmt: skip
    truth["duration_s"] = (truth["session_end"] - truth["session_start"]).dt.total_seconds()
    return truth.drop(columns="burst")


def device_health(events: pd.DataFrame) -> pd.DataFrame:
    """Per hour and sensor: readings, lowest battery, the battery and time of the last reading (by time, then
    event id), and the share of readings above the temperature or below the battery threshold."""
    keys = ["window_start", "sensor_id"]
    events = events.assign(
        window_start=events["ts"].dt.floor(f"{HEALTH_WINDOW_S}s"),
        alerting=(events["temperature"] > ALERT_TEMPERATURE_C) | (events["battery"] < ALERT_BATTERY_PCT),
    )
    last = events.sort_values([*keys, "ts", "event_id"]).drop_duplicates(keys, keep="last")
    last = last[[*keys, "battery", "ts"]].rename(columns={"battery": "battery_last", "ts": "last_seen"})
    counts = events.groupby(keys, as_index=False).agg(
        readings=("event_id", "size"), battery_min=("battery", "min"), alert_share=("alerting", "mean")
    )
    return counts.merge(last, on=keys, validate="one_to_one")


VIEWS = {
    "sensor_stats": sensor_stats,
    "location_stats": location_stats,
    "device_health": device_health,
    "activity_stats": activity_stats,
    "sessions": sessions,
}


def concat_days(frame: pd.DataFrame, days, view) -> pd.DataFrame:
    """A view computed day by day (as the batch layer does) over the events of the given days."""
    parts = [view(clean_events(frame[frame["ts"].dt.date == day])) for day in days]
    return pd.concat(parts, ignore_index=True)


def late_windows(frame: pd.DataFrame, watermark: pd.Timedelta) -> set:
    """The windows holding an event that reached Kafka more than the watermark after its time (`_kafka_ts`).
    Whether the speed layer dropped such an event depends on the watermark of the micro-batch that read it
    (a stream that was down for a while reads late events against an older watermark), so a comparison of
    speed views with the ground truth leaves these windows out; the batch layer counts every event."""
    late = frame[(frame["_kafka_ts"] - frame["ts"]) > watermark]
    return set(late["ts"].dt.floor(f"{WINDOW_S}s"))
