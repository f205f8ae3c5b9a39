"""The Lambda merge through the HTTP API, on a store filled by the real layers: events produced over two days
(duplicates, late, out-of-order and malformed records included), archived into the lake, day D recomputed and
published by the batch layer, everything streamed through the speed layer. Every endpoint answers day D from
batch (equal to a pandas ground truth) and day D+1 from speed (equal to the speed tables) with the horizon as
`batch_as_of`; after publishing D+1, both days come from batch and equal the ground truth."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from batch.publish import publish_batch_day
from batch.recompute import recompute_day
from ingestion.archiver import start_archiver
from lambdaflow import store
from lambdaflow.views import VIEWS
from serving.app import create_app
from speed.queries import QUERY_PARTS
from speed.streams import start_speed_query
from tests import ground_truth
from tests.batch.test_recompute import topic_events
from tests.conftest import run_cli, settings_env

pytestmark = pytest.mark.integration
COUNT = 3000
FAULTS = ["--duplicates", "0.05", "--late", "0.02", "--out-of-order", "0.05", "--malformed", "0.02"]
SUBJECT_ENDPOINTS = {"sensor_stats": ("sensor_id", "/api/v1/sensors/{}/metrics"),
                     "location_stats": ("location", "/api/v1/locations/{}/metrics")}  # fmt: skip
PLAIN_ENDPOINTS = {"activity_stats": "/api/v1/activity", "sessions": "/api/v1/sessions"}


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def api_points(client, url: str, start: datetime, end: datetime) -> tuple[dict, pd.DataFrame]:
    response = client.get(url, query_string={"from": start.isoformat(), "to": end.isoformat()})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    frame = pd.DataFrame(body["points"])
    for column in ("window_start", "session_start", "session_end"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return body, frame


def speed_rows(engine, view: str, since: datetime) -> pd.DataFrame:
    table = store.SPEED_TABLES[view]
    column = table.c[VIEWS[view].time_column]
    with engine.connect() as connection:
        rows = connection.execute(select(table).where(column >= since.replace(tzinfo=None))).mappings().all()
    frame = pd.DataFrame(rows).drop(columns="updated_at")
    for name in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[name]):
            frame[name] = frame[name].dt.tz_localize("UTC")
    return frame


def assert_rows_equal(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    assert len(actual) == len(expected) > 0
    columns = [c for c in expected.columns if c in actual.columns]
    assert set(columns) >= set(keys)
    actual = actual.sort_values(keys).reset_index(drop=True)[columns]
    expected = expected.sort_values(keys).reset_index(drop=True)[columns]
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, rtol=1e-9)


def every_answer(client, engine, start: datetime, end: datetime):
    """(view, body, points, subject filter) for every merged endpoint over [start, end)."""
    for view, (column, url) in SUBJECT_ENDPOINTS.items():
        table = store.BATCH_TABLES[view]
        with engine.connect() as connection:
            subjects = sorted({row[0] for row in connection.execute(select(table.c[column]).distinct())})
        assert subjects
        for subject in subjects[:3]:
            body, points = api_points(client, url.format(subject), start, end)
            assert body[column] == subject
            yield view, body, points.assign(**{column: subject}), (column, subject)
    for view, url in PLAIN_ENDPOINTS.items():
        body, points = api_points(client, url, start, end)
        yield view, body, points, None


def test_batch_before_the_horizon_speed_after_then_batch_for_both(spark, settings):
    day = datetime.now(UTC).date() - timedelta(days=3)
    next_day = day + timedelta(days=1)
    env = settings_env(settings)
    rate = str(COUNT / (2 * 86_400))  # spread the simulated event times over D and D+1
    for kind, extra in (("iot", ["--sensors", "4"]), ("activity", ["--users", "40"])):
        run_cli(["produce", kind, "--count", str(COUNT), "--rate", rate, "--seed", "5",
                 "--start", midnight(day).isoformat(), *extra, *FAULTS], env)  # fmt: skip
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()
    recompute_day(spark, settings, day)
    assert publish_batch_day(settings, day) == datetime.combine(next_day, time())
    for contract in QUERY_PARTS:  # after the publish, so the speed tables also hold day D rows to skip
        query = start_speed_query(spark, settings, contract, once=True)
        query.awaitTermination()
        assert query.exception() is None

    frames = {
        "iot_sensors": topic_events(settings, settings.topic_iot, "iot_sensors", COUNT),
        "user_activity": topic_events(settings, settings.topic_activity, "user_activity", COUNT),
    }
    engine = store.engine(settings.resolved_store_url)
    client = create_app(settings).test_client()
    start, middle, end = midnight(day), midnight(next_day), midnight(next_day + timedelta(days=1))

    speed_seen = 0
    for view, body, points, subject in every_answer(client, engine, start, end):
        keys = list(VIEWS[view].keys)
        time_column = VIEWS[view].time_column
        assert body["batch_as_of"] == f"{next_day}T00:00:00Z", view
        assert set(points["source"]) <= {"batch", "speed"}
        before = points[points[time_column] < pd.Timestamp(middle)]
        after = points[points[time_column] >= pd.Timestamp(middle)]
        assert (before["source"] == "batch").all() and (after["source"] == "speed").all(), view
        truth = ground_truth.VIEWS[view](ground_truth.clean_events(
            frames[VIEWS[view].contract].loc[lambda f: f["ts"].dt.date == day]))  # fmt: skip
        speed = speed_rows(engine, view, middle)
        if subject:
            truth = truth[truth[subject[0]] == subject[1]]
            speed = speed[speed[subject[0]] == subject[1]]
        assert_rows_equal(before, truth, keys)
        if len(after) or len(speed):
            assert_rows_equal(after, speed, keys)
            speed_seen += len(after)
            approximate = {"location_stats": ["sensors"], "activity_stats": ["users"]}.get(view)
            if approximate:
                assert all(a == approximate for a in after["approximate"]), view
    assert speed_seen > 0, "no speed point at all: the merge's speed side went untested"

    recompute_day(spark, settings, next_day)
    publish_batch_day(settings, next_day, force=True)  # D+1 is not complete: its events end inside it
    for view, body, points, subject in every_answer(client, engine, start, end):
        assert body["batch_as_of"] == f"{next_day + timedelta(days=1)}T00:00:00Z", view
        assert (points["source"] == "batch").all(), view
        truth = ground_truth.concat_days(frames[VIEWS[view].contract], [day, next_day],
                                         ground_truth.VIEWS[view])  # fmt: skip
        if subject:
            truth = truth[truth[subject[0]] == subject[1]]
        assert_rows_equal(points, truth, list(VIEWS[view].keys))
