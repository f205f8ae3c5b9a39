"""Publishing never throws fresh data away: a day the lake is not complete for (today, a future day) or holds
no raw events for is refused, by the CLI and the DAG's task alike, and leaves the store byte for byte as it
was; a complete day with raw events publishes, and `--force` publishes even an empty day. No Spark: the lake
is written in its own layout with pyarrow and the archiver's own status writer."""

from __future__ import annotations

import hashlib
import time as clock
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import func, select

from batch import tasks
from batch.publish import PublishRefused, check_publishable, publish_batch_day
from batch.recompute import BASELINES, LATE_EVENTS
from ingestion.archiver import ArchiverStatus, status_path
from lambdaflow import store
from lambdaflow.lake import RAW_SCHEMAS, day_dir, raw_dir, view_dir, write_parquet_atomically
from lambdaflow.settings import Settings, load_settings
from lambdaflow.views import VIEWS
from serving import merge
from tests.conftest import run_cli, settings_env

NOW = datetime.now(UTC)
TODAY = NOW.date()
TOMORROW = TODAY + timedelta(days=1)
PAST = TODAY - timedelta(days=3)  # complete, with raw events
EMPTY = TODAY - timedelta(days=2)  # complete, no raw events
NEW_YEAR = date(TODAY.year + 1, 1, 1)  # in the future, like the empty day that emptied a live store


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from the environment, as the DAG's tasks load them, with this test's data directory and the
    default SQLite store in it."""
    monkeypatch.setenv("LAMBDAFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LAMBDAFLOW_STORE_URL", raising=False)
    return load_settings()


def archive_until(settings: Settings, moment: datetime, topics: tuple[str, ...] | None = None) -> None:
    """The archiver's status: every topic (or the given ones) archived up to event time `moment`."""
    stats = [{"topic": t, "partition": 0, "valid": 1, "invalid": 0, "max_event_ts": moment}
             for t in (topics or settings.topics)]  # fmt: skip
    path = status_path(settings)
    status = ArchiverStatus(path)
    assert status.record(status.state["last_batch_id"] + 1, stats)


def write_raw(settings: Settings, day: date, contract: str = "iot_sensors", rows: int = 2) -> None:
    ts = datetime.combine(day, time(12), tzinfo=UTC)
    values = {"event_id": [f"e-{day}-{n}" for n in range(rows)], "ts": [ts] * rows}
    schema = RAW_SCHEMAS[contract]
    table = pa.table({f.name: values.get(f.name, [None] * rows) for f in schema}, schema=schema)
    path = (
        day_dir(raw_dir(settings.lake_dir, settings.topic_for(contract)), day)
        / "part-0000000000-0000.parquet"
    )
    write_parquet_atomically(table, path)


def write_views(settings: Settings, day: date, sensor_rows: list[dict] | None = None) -> None:
    """Day D's recomputed outputs as `lake/views/<name>/date=D/` holds them: the given sensor_stats rows, the
    other outputs empty (what recomputing a day without events gives)."""
    for name in (*VIEWS, LATE_EVENTS, BASELINES):
        rows = sensor_rows if name == "sensor_stats" and sensor_rows else []
        table = pa.Table.from_pylist(rows) if rows else pa.table({"empty": pa.array([], pa.int64())})
        write_parquet_atomically(
            table, day_dir(view_dir(settings.lake_dir, name), day) / "part-00000.parquet"
        )


def speed_windows(settings: Settings, since: datetime, hours: int) -> int:
    """One speed sensor_stats window an hour from `since`; the number written."""
    engine = store.engine(settings.resolved_store_url)
    base = since.replace(minute=0, second=0, microsecond=0)
    rows = [{"window_start": base + timedelta(hours=n), "sensor_id": "s-1", "location": "x", "events": 1,
             "updated_at": NOW} for n in range(hours)]  # fmt: skip
    store.upsert(engine, store.SPEED_TABLES["sensor_stats"], rows)
    engine.dispose()  # SQLite checkpoints its WAL into the file: the file alone then holds the store
    return len(rows)


def speed_count(settings: Settings) -> int:
    engine = store.engine(settings.resolved_store_url, upgrade=False)
    with engine.connect() as connection:
        count = connection.execute(
            select(func.count()).select_from(store.SPEED_TABLES["sensor_stats"])
        ).scalar()
    engine.dispose()
    return count


def store_hash(settings: Settings) -> str:
    """The store's bytes: the database file and any WAL or shared-memory file beside it."""
    database = settings.data_dir.resolve() / "serving.db"
    digest = hashlib.sha256()
    for path in sorted(database.parent.glob("serving.db*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def live(settings: Settings) -> Settings:
    """A live store and lake: archived until now, raw events today and on PAST, recomputed views for every
    day the tests publish, and speed windows every hour of the last four days."""
    archive_until(settings, NOW)
    for day in (PAST, TODAY):
        write_raw(settings, day)
    for day in (PAST, EMPTY, TODAY, TOMORROW, NEW_YEAR):
        write_views(settings, day)
    speed_windows(settings, NOW - timedelta(days=4), 4 * 24)
    return settings


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        (TODAY, "the lake is complete only until"),
        (TOMORROW, "the lake is complete only until"),
        (NEW_YEAR, "the lake is complete only until"),
        (EMPTY, f"the lake holds no raw events for {EMPTY}"),
    ],
    ids=["today", "tomorrow", "new-year", "no-raw-events"],
)
def test_a_day_the_lake_is_not_ready_for_is_refused_and_the_store_is_unchanged(live, day, reason):
    before, speed = store_hash(live), speed_count(live)
    for publish in (lambda: publish_batch_day(live, day), lambda: tasks.publish(day.isoformat())):
        with pytest.raises(PublishRefused, match=f"^cannot publish {day}: {reason}") as refused:
            publish()
        assert "\n" not in str(refused.value)
    assert store_hash(live) == before, "a refused publish changed the store"
    assert speed_count(live) == speed


def test_the_refusal_names_the_times_of_the_rule(live):
    needed = datetime.combine(TOMORROW + timedelta(days=1), time(), tzinfo=UTC) + timedelta(
        seconds=live.watermark_seconds
    )
    with pytest.raises(PublishRefused) as refused:
        check_publishable(live, TOMORROW)
    assert str(refused.value) == (
        f"cannot publish {TOMORROW}: the lake is complete only until {NOW:%Y-%m-%d %H:%M:%S} UTC "
        f"(every topic's archived event time must reach {needed:%Y-%m-%d %H:%M:%S} UTC)"
    )


def test_the_sensor_and_the_publish_check_share_the_rule(settings):
    """The lake is complete for D exactly when every topic's archived event time reaches D+1 plus the
    watermark: the sensor and the publish check agree on either side of that instant."""
    write_raw(settings, PAST)
    needed = datetime.combine(PAST + timedelta(days=1), time(), tzinfo=UTC) + timedelta(
        seconds=settings.watermark_seconds
    )
    with pytest.raises(PublishRefused, match="the archiver has not archived every topic yet"):
        check_publishable(settings, PAST)  # no archiver status at all
    assert not tasks.lake_ready(PAST.isoformat())

    archive_until(settings, NOW, topics=(settings.topic_iot,))  # one topic archived, the other not yet
    with pytest.raises(PublishRefused, match="the archiver has not archived every topic yet"):
        check_publishable(settings, PAST)
    assert not tasks.lake_ready(PAST.isoformat())

    status_path(settings).unlink()
    archive_until(settings, NOW, topics=(settings.topic_iot,))
    archive_until(settings, needed - timedelta(microseconds=1), topics=(settings.topic_activity,))
    with pytest.raises(PublishRefused, match="the lake is complete only until"):
        check_publishable(settings, PAST)
    assert not tasks.lake_ready(PAST.isoformat())

    archive_until(settings, needed, topics=(settings.topic_activity,))
    check_publishable(settings, PAST)
    assert tasks.lake_ready(PAST.isoformat())


def test_raw_events_of_one_topic_are_enough_and_empty_or_hidden_files_are_not(settings):
    archive_until(settings, NOW)
    folder = day_dir(raw_dir(settings.lake_dir, settings.topic_activity), EMPTY)
    write_raw(settings, EMPTY, "user_activity", rows=1)
    (folder / "part-0000000000-0000.parquet").rename(folder / ".part-0000000000-0000.parquet.x.tmp")
    write_raw(settings, EMPTY, "user_activity", rows=0)
    with pytest.raises(PublishRefused, match="no raw events"):
        check_publishable(settings, EMPTY)  # a writer's temporary file and an empty file hold no event
    write_raw(settings, EMPTY, "user_activity", rows=1)
    check_publishable(settings, EMPTY)


def test_a_complete_day_with_raw_events_publishes(live):
    end = datetime.combine(PAST + timedelta(days=1), time())
    row = {"window_start": datetime.combine(PAST, time(12), tzinfo=UTC), "sensor_id": "s-1", "location": "x",
           "events": 2, "temperature_avg": 20.0}  # fmt: skip
    write_views(live, PAST, [row])
    speed = speed_count(live)
    assert publish_batch_day(live, PAST) == end
    engine = store.engine(live.resolved_store_url)
    assert all(merge.horizon(engine, name) == end for name in VIEWS)
    table = store.SPEED_TABLES["sensor_stats"]
    with engine.connect() as connection:
        starts = connection.execute(select(table.c.window_start)).scalars().all()
        batch = connection.execute(select(store.BATCH_TABLES["sensor_stats"])).mappings().all()
    engine.dispose()
    assert starts and min(starts) >= end, "a speed row before the horizon stayed"
    assert 0 < len(starts) < speed
    assert [(r["sensor_id"], r["events"], r["day"]) for r in batch] == [("s-1", 2, PAST)]


def test_force_publishes_an_empty_day(live):
    end = datetime.combine(EMPTY + timedelta(days=1), time())
    assert publish_batch_day(live, EMPTY, force=True) == end
    engine = store.engine(live.resolved_store_url)
    assert merge.horizon(engine, "sensor_stats") == end
    table = store.SPEED_TABLES["sensor_stats"]
    with engine.connect() as connection:
        assert connection.execute(select(func.min(table.c.window_start))).scalar() >= end
    engine.dispose()


def test_cli_refuses_tomorrow_in_one_line_before_starting_spark(live):
    env = settings_env(live)
    before = store_hash(live)
    started = clock.monotonic()
    result = run_cli(["batch", "--date", TOMORROW.isoformat(), "--publish"], env, timeout=60, check=False)
    elapsed = clock.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"lambdaflow: cannot publish {TOMORROW}: the lake is complete only until")
    assert result.stderr.count("\n") == 1, result.stderr
    assert elapsed < 20, f"the refusal took {elapsed:.1f} s: did Spark start?"
    assert store_hash(live) == before


def test_cli_force_without_publish_is_a_usage_error(live):
    result = run_cli(
        ["batch", "--date", PAST.isoformat(), "--force"], settings_env(live), timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == "lambdaflow: --force needs --publish (see `lambdaflow batch -h`)\n"
