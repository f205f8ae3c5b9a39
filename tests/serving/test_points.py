"""A subject's points stored when its day is published: they answer, byte for byte, what the batch rows answer
(the rows' values as Spark hands them over, not as the store gives them back), over whole and partial days
with speed rows after the horizon, on SQLite and PostgreSQL; republishing replaces them; an upgrade makes
them for days published before, and again for a view whose batch table gains a column."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from itertools import product

import pytest
from sqlalchemy import Column, Float, MetaData, select, text

from lambdaflow import migrations, points, store
from lambdaflow.views import VIEWS
from serving import merge
from tests.conftest import new_database

DAY = date(2026, 11, 20)
MIDNIGHT = datetime.combine(DAY, time())
AWARE = MIDNIGHT.replace(tzinfo=UTC)  # Spark's rows carry aware UTC times; the store keeps naive ones


def day_rows() -> dict[str, list[dict]]:
    """Rows whose values the store changes on the way back: an int in a float column (read back 21.0), a
    float in an integer column (3), aware times with microseconds, NULLs."""
    sensors, locations, health, activity, sessions = [], [], [], [], []
    for k in range(6):
        window = AWARE + timedelta(minutes=5 * k)
        for sensor in ("s-1", "s-2"):
            sensors.append({
                "window_start": window, "sensor_id": sensor, "location": "lab", "events": 3.0 + k,
                "temperature_avg": 21 + k, "temperature_min": 20.25, "temperature_max": 1e-7 + k,
                "humidity_avg": None, "pressure_avg": 1013.1 / 3, "battery_min": 80,
            })  # fmt: skip
        locations.append({"window_start": window, "location": "lab", "events": 6, "sensors": 2,
                          "temperature_avg": 21.5, "temperature_max": 23})  # fmt: skip
        activity.append({"window_start": window, "event_type": ("purchase", "login")[k % 2],
                         "browser": "firefox", "events": 2, "users": 1, "revenue": k * 10})  # fmt: skip
        sessions.append({
            "session_id": f"session-{k}", "session_start": window + timedelta(microseconds=123_456),
            "user_id": "u1", "session_end": window + timedelta(minutes=k), "duration_s": 60 * k,
            "events": 4, "purchases": k % 2, "revenue": 12.5 * (k % 2),
        })  # fmt: skip
    for sensor, hour in product(("s-1", "s-2"), (0, 1)):
        start = AWARE + timedelta(hours=hour)
        health.append({"window_start": start, "sensor_id": sensor, "readings": 36 + hour, "battery_min": 80,
                       "battery_last": 81.5, "last_seen": start + timedelta(minutes=59, microseconds=7),
                       "alert_share": 1 / 3})  # fmt: skip
    return {"sensor_stats": sensors, "location_stats": locations, "device_health": health,
            "activity_stats": activity, "sessions": sessions}  # fmt: skip


def speed_rows() -> dict[str, list[dict]]:
    """A row of each view the day after: answered by speed, after the batch points."""
    next_day = MIDNIGHT + timedelta(days=1, minutes=5)
    rows = {view: [dict(first)] for view, (first, *_) in day_rows().items()}
    for view, (row,) in rows.items():
        row[VIEWS[view].time_column] = next_day
        row["updated_at"] = next_day
    rows["sensor_stats"][0]["events"] = 3
    rows["location_stats"][0]["sensors_sketch"] = b"\0"
    rows["activity_stats"][0]["users_sketch"] = b"\0"
    rows["device_health"][0].update(alerting_readings=1, last_event_id="e1", last_seen=next_day)
    rows["sessions"][0]["session_start"] = next_day
    return rows


DAYS = (DAY - timedelta(days=1), DAY)
DAY_LENGTH = timedelta(days=1)
WHOLE = f"from={DAYS[0]}T00:00:00Z&to={DAY + timedelta(days=2)}T00:00:00Z"
# part of the first day (its rows), the whole second (its stored points), part of the next (speed)
PARTIAL = f"from={DAYS[0]}T00:10:00%2B00:00&to={DAY + timedelta(days=1)}T00:07:00Z"
PATHS = [
    "/api/v1/sensors/s-1/metrics?",
    "/api/v1/sensors/s-2/health?",
    "/api/v1/locations/lab/metrics?",
    "/api/v1/activity?event_type=purchase&",
    "/api/v1/sessions?min_duration_s=120&",
]
URLS = [path + span for span in (WHOLE, PARTIAL) for path in PATHS]


def answers(client) -> dict[str, bytes]:
    found = {}
    for url in URLS:
        response = client.get(url)
        assert response.status_code == 200, (url, response.get_json())
        found[url] = response.data
    return found


def stored_points(engine) -> dict[tuple, bytes]:
    table = store.batch_points
    with engine.connect() as connection:
        return {
            (view, subject, day): found for view, subject, day, found in connection.execute(select(table))
        }


# Per subject view: its subjects (the other views have no stored points).
SUBJECTS = {"sensor_stats": ("s-1", "s-2"), "location_stats": ("lab",), "device_health": ("s-1", "s-2")}
SPANS = [  # (start, end, whether a whole published day is in it)
    (datetime.combine(DAYS[0], time()), datetime.combine(DAY + timedelta(days=2), time()), True),
    # part of the first day (its rows), the whole second (its points), part of the next (speed)
    (datetime.combine(DAYS[0], time(0, 10)), datetime.combine(DAY + timedelta(days=1), time(0, 7)), True),
    (datetime.combine(DAYS[0], time()), datetime.combine(DAYS[0], time(0, 20)), False),  # from midnight
    (datetime.combine(DAY, time(0, 5)), datetime.combine(DAY, time(0, 20)), False),  # within a day
    (
        datetime.combine(DAY, time(0, 5)),
        datetime.combine(DAY + timedelta(days=1), time()),
        False,
    ),  # to midnight
]


@pytest.fixture(params=["sqlite", "postgresql"])
def published(request, make_client):
    """Two published days (rows from `day_rows`, shifted) and a speed row of each view on the day after."""
    overrides = {}
    if request.param == "postgresql":
        overrides["store_url"] = new_database(request.getfixturevalue("postgres_url"), prefix="points")
    app, client = make_client(serve_cache_seconds=0, **overrides)
    engine = app.extensions["lambdaflow.store"]
    for day in DAYS:
        store.publish_day(engine, day, shifted(day_rows(), day - DAY))
    for view, rows in speed_rows().items():
        store.upsert(engine, store.SPEED_TABLES[view], rows)
    yield client, engine
    engine.dispose()


def shifted(rows: dict[str, list[dict]], by: timedelta) -> dict[str, list[dict]]:
    return {view: [{k: v + by if isinstance(v, datetime) else v for k, v in row.items()} for row in found]
            for view, found in rows.items()}  # fmt: skip


def test_stored_points_answer_the_bytes_the_rows_answer(published):
    client, engine = published
    expected = {(view, name, day) for day in DAYS for view, names in SUBJECTS.items() for name in names}
    assert set(stored_points(engine)) == expected
    for view, names in SUBJECTS.items():
        for name, (start, end, whole_day) in product(names, SPANS):
            subject = {points.subject(view): name}
            from_points = merge.merged_view(engine, view, start, end, equals=subject)
            from_rows = merge.merged_view(engine, view, start, end, equals=subject, stored_points=False)
            assert (
                from_points.batch_as_of == from_rows.batch_as_of == datetime.combine(DAY, time()) + DAY_LENGTH
            )
            assert b",".join(from_points.points) == b",".join(from_rows.points), (view, name, start, end)
            assert (len(from_points.points) < len(from_rows.points)) == whole_day, "a whole day is one value"
    answered = answers(client)
    assert json.loads(answered[URLS[0]]) == expected_sensor_answer()
    whole = json.loads(answered[URLS[0]])
    assert [(p["source"], p["events"], p["temperature_avg"]) for p in whole["points"][:2]] == [
        ("batch", 3, 21.0), ("batch", 4, 22.0)
    ]  # fmt: skip
    assert [p["source"] for p in whole["points"]] == ["batch"] * 12 + ["speed"]
    partial = json.loads(answered[URLS[len(PATHS)]])["points"]
    assert [p["window_start"] for p in partial[:2]] == [f"{DAYS[0]}T00:10:00Z", f"{DAYS[0]}T00:15:00Z"]
    assert len(partial) == 4 + 6 + 1
    assert b'"temperature_avg":21.0,' in answered[URLS[0]] and b'"events":3,' in answered[URLS[0]]


def expected_sensor_answer() -> dict:
    """s-1's answer over the `WHOLE` span, from `day_rows` by hand."""
    found = []
    for day, k in product(DAYS, range(6)):
        window = datetime.combine(day, time(0, 5 * k)).isoformat() + "Z"
        found.append({"window_start": window, "location": "lab", "events": 3 + k, "temperature_avg": 21.0 + k,
                      "temperature_min": 20.25, "temperature_max": 1e-7 + k, "humidity_avg": None,
                      "pressure_avg": 1013.1 / 3, "battery_min": 80.0, "source": "batch"})  # fmt: skip
    speed = {**found[0], "window_start": f"{DAY + DAY_LENGTH}T00:05:00Z", "source": "speed"}
    return {"sensor_id": "s-1", "from": f"{DAYS[0]}T00:00:00Z", "to": f"{DAY + 2 * DAY_LENGTH}T00:00:00Z",
            "batch_as_of": f"{DAY + DAY_LENGTH}T00:00:00Z", "points": [*found, speed]}  # fmt: skip


def test_republishing_a_day_replaces_its_points(published):
    client, engine = published
    before = answers(client)
    rows = shifted(day_rows(), DAYS[1] - DAY)
    rows["sensor_stats"] = [row for row in rows["sensor_stats"] if row["sensor_id"] == "s-1"]
    store.publish_day(engine, DAYS[1], rows)
    assert ("sensor_stats", "s-2", DAYS[1]) not in stored_points(engine)
    assert answers(client) == before, "s-1's day is as it was"
    assert client.get(f"/api/v1/sensors/s-2/metrics?{WHOLE}").get_json()["points"][-1]["window_start"] == (
        f"{DAYS[0]}T00:25:00Z"
    )


def test_an_upgrade_makes_the_points_of_days_published_before_them(published):
    client, engine = published
    before, points_before = answers(client), stored_points(engine)
    with engine.begin() as connection:  # the store as the release before points left it
        connection.execute(text("DROP TABLE batch_points"))
        connection.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0001'"))

    migrations.upgrade(engine, store.metadata, store.view_table_names(), store.derive_points)

    assert stored_points(engine) == points_before
    assert answers(client) == before


def test_a_batch_table_given_a_column_makes_its_points_again(published):
    _, engine = published
    made = stored_points(engine)
    with engine.begin() as connection:
        connection.execute(store.batch_points.update().values(points=b'{"stale":true}'))
    extended = MetaData()
    for table in store.metadata.sorted_tables:
        table.to_metadata(extended)
    extended.tables["batch_sensor_stats"].append_column(Column("temperature_p95", Float))

    migrations.upgrade(engine, extended, store.view_table_names(), store.derive_points)

    after = stored_points(engine)
    assert {key: after[key] for key in made if key[0] == "sensor_stats"} == {
        key: found for key, found in made.items() if key[0] == "sensor_stats"
    }
    assert {after[key] for key in made if key[0] != "sensor_stats"} == {b'{"stale":true}'}, "others untouched"
