"""The store's migrations: a store the previous release made is upgraded in place and keeps its rows, a fresh
store reaches head, a second upgrade changes nothing, view tables follow their definitions without a
revision, a non-additive difference is refused, and processes starting together all succeed."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    MetaData,
    String,
    Table,
    event,
    inspect,
    text,
)

from lambdaflow import migrations, store
from lambdaflow.file_lock import lock_file
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE_DUMP = Path(__file__).parent / "fixtures" / "store_ecd7be1.sql"
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty store: a SQLite file, or a database of its own on the throwaway PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'serving.db'}"
        return
    server = request.getfixturevalue("postgres_url")
    name = f"migrations_{next(_databases)}"
    admin = store.engine(server, upgrade=False).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    url = f"{server.rsplit('/', 1)[0]}/{name}"
    yield url
    store.engine(url, upgrade=False).dispose()
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")


def differences(engine, metadata=store.metadata) -> list:
    """What Alembic's comparison finds between the store and `metadata` (nothing, once upgraded)."""
    with engine.connect() as connection:
        options = {"compare_type": True, "version_table": migrations.VERSION_TABLE}
        return compare_metadata(MigrationContext.configure(connection, opts=options), metadata)


def columns_of(connection: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {table: [r[1] for r in connection.execute(f"PRAGMA table_info({table})")] for table in tables}


def rows_of(database: Path, columns: dict[str, list[str]]) -> dict[str, set[tuple]]:
    """The rows of `columns`' tables as SQLite stores them (those columns only)."""
    with sqlite3.connect(database) as connection:
        return {table: set(connection.execute(f"SELECT {', '.join(names)} FROM {table}"))
                for table, names in columns.items()}  # fmt: skip


def test_a_store_made_by_the_previous_release_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    database = tmp_path / "serving.db"
    with sqlite3.connect(database) as connection:
        connection.executescript(PREVIOUS_RELEASE_DUMP.read_text())
        previous = columns_of(connection)
    before = rows_of(database, previous)
    assert sum(map(len, before.values())) == 12 and len([t for t in before if before[t]]) == 11

    engine = store.engine(f"sqlite:///{database}")

    assert migrations.current(engine) == migrations.head()
    assert differences(engine) == []
    assert rows_of(database, previous) == before


def test_a_fresh_store_is_upgraded_to_head_and_a_second_upgrade_changes_nothing(store_url):
    engine = store.engine(store_url)
    assert migrations.current(engine) == migrations.head()
    assert differences(engine) == []
    assert set(inspect(engine).get_table_names()) == {*store.metadata.tables, migrations.VERSION_TABLE}

    statements: list[str] = []

    def record(_connection, _cursor, statement, *_):
        statements.append(statement.lstrip().split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        migrations.upgrade(engine, store.metadata, store.view_table_names())
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements and not {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"} & set(statements)


def test_a_store_older_than_the_lag_columns_gets_them(tmp_path):
    """Stores made before stream_progress's lag columns (added without a revision) are brought to the
    baseline before they are stamped."""
    database = tmp_path / "serving.db"
    with sqlite3.connect(database) as connection:
        connection.executescript(PREVIOUS_RELEASE_DUMP.read_text())
        for column in ("end_offsets", "processed_offsets", "lag_records", "alerts_fired"):
            connection.execute(f"ALTER TABLE stream_progress DROP COLUMN {column}")
        connection.execute("DROP TABLE baselines")
    engine = store.engine(f"sqlite:///{database}")
    assert differences(engine) == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT query, batch_id FROM stream_progress")).all() == [("iot", 12)]


def with_a_new_view(metadata: MetaData) -> tuple[MetaData, set[str]]:
    """The store's tables plus what adding a view would derive: a new speed table with an index, and a
    new nullable column on an existing view table."""
    extended = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(extended)
    extended.tables["batch_sensor_stats"].append_column(Column("temperature_p95", Float))
    Table(
        "speed_next_view", extended,
        Column("window_start", DateTime, primary_key=True),
        Column("sensor_id", String(128), primary_key=True),
        Column("readings", BigInteger),
        Column("updated_at", DateTime, nullable=False),
        Index("ix_speed_next_view_lookup", "sensor_id", "window_start"),
    )  # fmt: skip
    return extended, store.view_table_names() | {"speed_next_view"}


def test_a_new_view_table_and_column_appear_by_the_sync_and_rows_stay(store_url):
    engine = store.engine(store_url)
    row = {"window_start": datetime(2026, 12, 1, 10, 0), "sensor_id": "s-1", "location": "lab", "events": 3,
           "day": date(2026, 12, 1)}  # fmt: skip
    store.insert_new(engine, store.BATCH_TABLES["sensor_stats"], [row])
    extended, view_tables = with_a_new_view(store.metadata)

    migrations.upgrade(engine, extended, view_tables)

    assert differences(engine, extended) == []
    schema = inspect(engine)
    assert "speed_next_view" in schema.get_table_names()
    assert [i["name"] for i in schema.get_indexes("speed_next_view")] == ["ix_speed_next_view_lookup"]
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT sensor_id, events, temperature_p95 FROM batch_sensor_stats"))
        assert stored.all() == [("s-1", 3, None)]


@pytest.mark.parametrize("change", ["drop", "retype"])
def test_a_change_that_is_not_additive_is_refused_in_one_line_and_nothing_changes(store_url, change):
    engine = store.engine(store_url)
    extended, view_tables = with_a_new_view(store.metadata)
    table = extended.tables["speed_location_stats"]
    if change == "drop":  # the table as the store has it, but for one column
        kept = [column.name for column in table.columns if column.name != "temperature_max"]
        extended.remove(table)
        Table(table.name, extended, autoload_with=engine, include_columns=kept)
    else:
        table.c.temperature_max.type = String(16)

    with pytest.raises(migrations.SchemaChangeRefused) as refused:
        migrations.upgrade(engine, extended, view_tables)

    message = str(refused.value)
    assert "\n" not in message and "speed_location_stats.temperature_max" in message
    assert "lambdaflow/migrations/versions" in message
    assert "speed_next_view" not in inspect(engine).get_table_names()  # refused before any change
    assert differences(engine) == []


def test_processes_starting_together_all_upgrade_the_store(store_url):
    starter = "from lambdaflow import store, migrations; import sys; " \
              "print(migrations.current(store.engine(sys.argv[1])))"  # fmt: skip
    command = [sys.executable, "-c", starter, store_url]
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    assert [(code, out.strip()) for code, out, _ in results] == [(0, migrations.head())] * 4, results
    assert differences(store.engine(store_url, upgrade=False)) == []


def test_a_process_connects_to_a_new_sqlite_store_only_after_another_upgrade_of_it(tmp_path):
    """A new store's first connections switch it to WAL, which needs the database to itself: a process that
    connected while another was creating the tables failed at once with "database is locked" (a backfill's
    two concurrent quality gates did). So the upgrade lock is taken before the first connection."""
    database = tmp_path / "serving.db"
    starter = "from lambdaflow import store, migrations; import sys; " \
              "print(migrations.current(store.engine(sys.argv[1])))"  # fmt: skip
    upgrade_lock = lock_file(Path(f"{database}.upgrade-lock"))  # another process's upgrade, under way
    try:
        waiting = subprocess.Popen([sys.executable, "-c", starter, f"sqlite:///{database}"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(3)  # longer than the process takes to import and reach the store
        assert waiting.poll() is None and not database.exists(), "it connected during the other's upgrade"
    finally:
        upgrade_lock.close()
    out, err = waiting.communicate(timeout=120)
    assert (waiting.returncode, out.strip()) == (0, migrations.head()), err


def _engine_in_child(url: str, parent_engine_id: int, answers: multiprocessing.Queue) -> None:
    engine = store.engine(url)
    with engine.connect() as connection:
        answers.put((id(engine) != parent_engine_id, connection.execute(text("SELECT 1")).scalar()))


def test_one_engine_per_store_per_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'serving.db'}"
    engine = store.engine(url)
    assert store.engine(url) is engine and store.engine(url, upgrade=False) is engine
    with engine.connect() as connection:  # the parent's pool holds a connection the child must not use
        connection.execute(text("SELECT 1"))
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_engine_in_child, args=(url, id(engine), answers))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and answers.get(timeout=5) == (True, 1)


def test_the_command_line_upgrades_a_store_of_the_previous_release_and_says_where_it_is(tmp_path):
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "serving.db") as connection:
        connection.executescript(PREVIOUS_RELEASE_DUMP.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAFLOW_")}
    env |= {"LAMBDAFLOW_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}

    before = run_cli(["store", "current"], env, timeout=60).stdout
    upgraded = run_cli(["store", "upgrade"], env, timeout=60)
    after = run_cli(["store", "current"], env, timeout=60).stdout

    head = migrations.head()
    assert before.strip() == f"store at revision none, newest {head}"
    assert upgraded.stdout.strip() == f"store at revision {head}"
    assert "stamped at the baseline" in upgraded.stderr and "alembic" not in upgraded.stderr
    assert after.strip() == f"store at revision {head}, newest {head}"


COMMIT_ROW = "INSERT OR REPLACE INTO speed_commits (query, checkpoint_id, batch_id, committed_at) " \
             "VALUES ('q', 'c', ?, '2026-12-03 00:00:00')"  # fmt: skip


def test_an_upgrade_waits_for_a_process_writing_to_the_store(tmp_path):
    """A migrating process meets the streaming writer of a running stack: it waits for the write lock rather
    than failing when a write lands between its reading the schema and changing it."""
    database = tmp_path / "serving.db"
    engine = store.engine(f"sqlite:///{database}")
    extended, view_tables = with_a_new_view(store.metadata)
    stop = threading.Event()
    writes = itertools.count()

    def write_until_stopped() -> None:
        with sqlite3.connect(database, timeout=10, isolation_level=None) as writer:
            while not stop.is_set():
                batch = next(writes)
                writer.execute("BEGIN IMMEDIATE")
                writer.execute(COMMIT_ROW, (batch,))
                writer.execute("COMMIT")
                time.sleep(0.002)

    writer = threading.Thread(target=write_until_stopped)
    writer.start()
    try:
        while next(writes) < 50:  # the writer is busy
            time.sleep(0.001)
        migrations.upgrade(engine, extended, view_tables)
    finally:
        stop.set()
        writer.join()
    assert differences(engine, extended) == []
