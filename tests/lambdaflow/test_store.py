"""The serving store: upserts are idempotent, alerts are never duplicated, timestamps are naive UTC."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from lambdaflow import store
from lambdaflow.store import SPEED_TABLES, alerts, insert_new, metadata, quality_runs, upsert

WINDOW = datetime(2026, 11, 22, 12, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """The store on SQLite and on a throwaway PostgreSQL, emptied for each test."""
    if request.param == "sqlite":
        yield store.engine(f"sqlite:///{tmp_path / 'serving.db'}")
        return
    engine = store.engine(request.getfixturevalue("postgres_url"))
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


def test_sqlite_rows_are_stored_as_sqlalchemy_itself_stores_them(tmp_path):
    """The store hands SQLite its values directly (faster than SQLAlchemy's per-row processing): the bytes
    stored must be the ones SQLAlchemy's own types store, or lookups by time would miss."""
    location = row(3, 25.0) | {"temperature_sum": 60.0, "sensors_sketch": b"\x00\x01"}
    alert = {"alert_id": "a1", "rule": "battery_low", "ts": WINDOW + timedelta(microseconds=7),
             "subject": "s1", "value": 19.5, "threshold": 20.0, "event": "{}",
             "created_at": datetime(2026, 11, 22, 12, 5)}  # fmt: skip
    run = {"day": date(2026, 11, 22), "suite": "iot", "success": True, "statistics": "{}", "failed": "[]",
           "link": None, "run_at": WINDOW.astimezone(timezone(timedelta(hours=2)))}  # fmt: skip
    ours = store.engine(f"sqlite:///{tmp_path / 'ours.db'}")
    theirs = store.engine(f"sqlite:///{tmp_path / 'theirs.db'}")
    for table, values in ((SPEED_TABLES["location_stats"], location), (alerts, alert), (quality_runs, run)):
        insert_new(ours, table, [values])
        naive = {k: v.astimezone(UTC).replace(tzinfo=None) if getattr(v, "tzinfo", None) else v
                 for k, v in values.items()}  # fmt: skip
        with theirs.begin() as connection:
            connection.execute(table.insert(), [naive])
        raw = f"SELECT * FROM {table.name}"  # the stored values, not SQLAlchemy's reading of them
        with ours.connect() as mine, theirs.connect() as reference:
            assert mine.exec_driver_sql(raw).all() == reference.exec_driver_sql(raw).all()


def test_a_driver_query_answers_what_sqlalchemy_answers(engine):
    """Values in (a time, a float given as an int, literals) and rows out (times, floats, bytes, NULLs)
    converted as SQLAlchemy's own execution converts them, on both stores."""
    from sqlalchemy import bindparam, literal, null

    table = SPEED_TABLES["location_stats"]
    upsert(engine, table, [row(3, 25.0), {**row(4, 31.5), "location": "hall", "temperature_avg": None}])
    statement = (
        select(table.c.location, table.c.window_start, table.c.temperature_avg, table.c.events,
               literal("speed").label("source"), literal(b"\x00\xff").label("blob"), null().label("absent"))
        .where(table.c.window_start >= bindparam("start", type_=table.c.window_start.type),
               table.c.temperature_max >= bindparam("hotter", type_=table.c.temperature_max.type))
        .order_by(table.c.location)
    )  # fmt: skip
    values = {"start": WINDOW - timedelta(minutes=5), "hotter": 20}
    with engine.connect() as connection:
        expected = [tuple(found) for found in connection.execute(statement, values)]
    query = store.DriverQuery.compile(statement, engine.dialect)
    assert query.run(engine, values) == query.run(engine, values) == expected
    assert [found[0] for found in expected] == ["hall", "lab"]
    assert expected[0][1] == WINDOW.replace(tzinfo=None) and expected[0][2] is None
    assert query.columns == ("location", "window_start", "temperature_avg", "events", "source", "blob",
                             "absent")  # fmt: skip


def test_a_driver_query_refuses_what_it_cannot_run_and_raises_sqlalchemy_errors(engine):
    from sqlalchemy.exc import DBAPIError

    table = SPEED_TABLES["location_stats"]
    with pytest.raises(ValueError, match="expanding"):
        store.DriverQuery.compile(select(table).where(table.c.location.in_(["lab", "hall"])), engine.dialect)
    lab = select(table.c.location).where(table.c.location == "lab")
    query = store.DriverQuery.compile(lab, engine.dialect)
    table.drop(engine)  # the driver's error reaches the caller as SQLAlchemy's execution raises it
    with pytest.raises(DBAPIError) as raised:
        query.run(engine, {})
    assert not raised.value.connection_invalidated
    table.create(engine)
    assert query.run(engine, {}) == []  # the pool's connection answers again
