"""Every view, defined once (how Spark computes each sits beside them, in `lambdaflow.views.spark`).

Windows are tumbling and aligned to UTC midnight, so no window spans two days. The value ranges of the
expectations are the event contracts' ranges wherever a column holds readings' values.
"""

from __future__ import annotations

from lambdaflow.contracts import RANGES
from lambdaflow.views.model import (
    Between,
    Filter,
    Increment,
    Latest,
    Route,
    View,
    binary,
    integer,
    number,
    text,
    time,
)


def _in_contract_range(column: str, reading: str) -> Between:
    """`column` holds values (or minima, maxima, averages) of the readings' `reading`."""
    return Between(column, *RANGES[reading])


def _at_least(column: str, low: float) -> Between:
    return Between(column, low, None)


_WINDOW = "window_start"

SENSOR_STATS = View(
    name="sensor_stats",
    contract="iot_sensors",
    keys=(_WINDOW, "sensor_id", "location"),
    columns=(
        time(_WINDOW),
        text("sensor_id"),
        text("location"),
        integer("events"),
        number("temperature_avg"),
        number("temperature_min"),
        number("temperature_max"),
        number("humidity_avg"),
        number("pressure_avg"),
        number("battery_min"),
    ),
    time_column=_WINDOW,
    increment=Increment(
        sums=("events", "temperature_sum", "humidity_sum", "pressure_sum"),
        mins=("temperature_min", "battery_min"),
        maxes=("temperature_max",),
        averages=(
            ("temperature_avg", "temperature_sum"),
            ("humidity_avg", "humidity_sum"),
            ("pressure_avg", "pressure_sum"),
        ),
        partials=(number("temperature_sum"), number("humidity_sum"), number("pressure_sum")),
    ),
    expectations=(
        _in_contract_range("temperature_min", "temperature"),
        _in_contract_range("temperature_max", "temperature"),
        _in_contract_range("battery_min", "battery"),
    ),
    lookup=("sensor_id", _WINDOW),
    reconciled=True,
    route=Route(
        "/sensors/<sensor_id>/metrics",
        "5-minute windows of one sensor (404: a sensor with no row in either layer)",
        subject="sensor_id",
    ),
)

LOCATION_STATS = View(
    name="location_stats",
    contract="iot_sensors",
    keys=(_WINDOW, "location"),
    columns=(
        time(_WINDOW),
        text("location"),
        integer("events"),
        integer("sensors"),
        number("temperature_avg"),
        number("temperature_max"),
    ),
    time_column=_WINDOW,
    increment=Increment(
        sums=("events", "temperature_sum"),
        maxes=("temperature_max",),
        sketches=(("sensors_sketch", "sensors"),),
        averages=(("temperature_avg", "temperature_sum"),),
        partials=(number("temperature_sum"), binary("sensors_sketch")),
    ),
    # a location's distinct sensors in a window are its per-sensor rows: exact without a distinct aggregate
    input_view="sensor_stats",
    expectations=(_at_least("sensors", 1), _in_contract_range("temperature_avg", "temperature")),
    lookup=("location", _WINDOW),
    reconciled=True,
    route=Route(
        "/locations/<location>/metrics",
        "5-minute windows of one location (404: a location with no row in either layer)",
        subject="location",
    ),
)

ACTIVITY_STATS = View(
    name="activity_stats",
    contract="user_activity",
    keys=(_WINDOW, "event_type", "browser"),
    columns=(
        time(_WINDOW),
        text("event_type", 32),
        text("browser"),
        integer("events"),
        integer("users"),
        number("revenue"),
    ),
    time_column=_WINDOW,
    increment=Increment(
        sums=("events", "revenue"), sketches=(("users_sketch", "users"),), partials=(binary("users_sketch"),)
    ),
    expectations=(_at_least("users", 1), _at_least("revenue", 0)),
    reconciled=True,
    route=Route(
        "/activity",
        "User activity per window, event type and browser, with revenue",
        filters=(Filter("event_type", description="e.g. purchase"), Filter("browser")),
    ),
)

SESSIONS = View(
    name="sessions",
    contract="user_activity",
    keys=("session_id", "session_start"),
    columns=(
        text("session_id"),
        time("session_start"),
        text("user_id"),
        time("session_end"),
        number("duration_s"),
        integer("events"),
        integer("purchases"),
        number("revenue"),
    ),
    time_column="session_start",
    increment=Increment(sums=("events", "purchases", "revenue"), sessions=True),
    expectations=(_at_least("duration_s", 0), _at_least("revenue", 0)),
    lookup=("session_start",),
    route=Route(
        "/sessions",
        "User sessions (30-minute gap) that started in the range",
        filters=(Filter("duration_s", "min_duration_s", at_least=True, minimum=0, description="Seconds"),),
    ),
)

DEVICE_HEALTH = View(
    name="device_health",
    contract="iot_sensors",
    keys=(_WINDOW, "sensor_id"),
    columns=(
        time(_WINDOW),
        text("sensor_id"),
        integer("readings"),
        number("battery_min"),
        number("battery_last"),
        time("last_seen"),
        number("alert_share"),
    ),
    time_column=_WINDOW,
    window_seconds=3600,
    # rolled up from the per-sensor windows: one aggregation of the readings serves both views
    input_view="sensor_stats",
    increment=Increment(
        count="readings",
        sums=("readings", "alerting_readings"),
        mins=("battery_min",),
        # the latest reading by (ts, event_id): its battery, its time (the newest of the window's readings)
        latest=(Latest("battery_last", ("last_seen", "last_event_id")),),
        averages=(("alert_share", "alerting_readings"),),
        partials=(integer("alerting_readings"), text("last_event_id")),
    ),
    expectations=(
        _in_contract_range("battery_min", "battery"),
        _in_contract_range("battery_last", "battery"),
        Between("alert_share", 0, 1),
    ),
    lookup=("sensor_id", _WINDOW),
    reconciled=True,
    route=Route(
        "/sensors/<sensor_id>/health",
        "Hourly health of one sensor: readings, battery, last reading, share of readings that broke a "
        "temperature or battery alert threshold (404: a sensor with no row in either layer)",
        subject="sensor_id",
    ),
)

# The registry: every view, in the order the layers compute and publish them.
VIEWS: dict[str, View] = {
    view.name: view for view in (SENSOR_STATS, LOCATION_STATS, DEVICE_HEALTH, ACTIVITY_STATS, SESSIONS)
}
