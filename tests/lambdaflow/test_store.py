"""The serving store: upserts are idempotent, alerts are never duplicated, timestamps are naive UTC."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from lambdaflow.store import SPEED_TABLES, alerts, connect, insert_new, metadata, upsert

WINDOW = datetime(2026, 11, 22, 12, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """The store on SQLite and on a throwaway PostgreSQL, emptied for each test."""
    if request.param == "sqlite":
        yield connect(f"sqlite:///{tmp_path / 'serving.db'}")
        return
    engine = connect(request.getfixturevalue("postgres_url"))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def row(events: int, temperature_max: float) -> dict:
    return {
        "window_start": WINDOW, "location": "lab", "events": events, "sensors": 2,
        "temperature_avg": 20.0, "temperature_max": temperature_max, "updated_at": datetime.now(UTC),
    }  # fmt: skip


def snapshot(engine, table):
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(select(table).order_by(*table.primary_key.columns))]


def test_upsert_replaces_whole_aggregates_and_replays_change_nothing(engine):
    table = SPEED_TABLES["location_stats"]
    upsert(engine, table, [row(3, 25.0)])
    upsert(engine, table, [row(5, 31.5)])  # the window grew: the whole aggregate is replaced
    first = snapshot(engine, table)
    assert [(r[2], r[5]) for r in first] == [(5, 31.5)]
    assert first[0][0] == datetime(2026, 11, 22, 12, 5)  # stored as naive UTC
    replay = row(5, 31.5) | {"updated_at": first[0][-1].replace(tzinfo=UTC)}
    upsert(engine, table, [replay])
    assert snapshot(engine, table) == first


def test_alerts_are_inserted_once(engine):
    alert = {
        "alert_id": "a1", "rule": "temperature_high", "ts": WINDOW, "subject": "sensor-1", "value": 31.0,
        "threshold": 30.0, "event": "{}", "created_at": WINDOW,
    }  # fmt: skip
    assert insert_new(engine, alerts, [alert]) == 1
    assert insert_new(engine, alerts, [alert | {"created_at": WINDOW + timedelta(hours=1)}]) == 0
    assert [r[-1] for r in snapshot(engine, alerts)] == [datetime(2026, 11, 22, 12, 5)]


def test_sqlite_store_uses_wal(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("a SQLite setting")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
