"""The serving store's schema and access (SQLAlchemy Core): SQLite by default, PostgreSQL by URL.

Tables: `speed_<view>` (real-time aggregates, primary key = the view's key, with their mergeable partials),
`speed_commits` (the last micro-batch merged per speed query), `alerts` (deterministic ids), `stream_progress`
(one row per streaming query), `batch_<view>` and `batch_late_events` (exact, per published day),
`batch_points` (per view, subject and published day, the API's points), `horizons` (per view, the end of the
newest published day), `baselines` (per sensor and hour of day, from the batch layer), `quality_runs` (Great
Expectations results). Writers upsert whole rows or replace whole days, so writing the same micro-batch or
day twice leaves the store unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from lambdaflow import migrations, points
from lambdaflow.views import VIEWS, Field
from lambdaflow.views.model import BYTES, FLOAT, INTEGER, TEXT, TIME

log = logging.getLogger(__name__)
metadata = MetaData()

_TIME = DateTime()  # naive UTC everywhere: SQLite has no time zones, PostgreSQL gets "timestamp"


def _sql_type(column: Field) -> Any:
    """A view column's SQL type, from the views' type vocabulary."""
    if column.type == TEXT:
        return String(column.length)
    return {TIME: DateTime, INTEGER: BigInteger, FLOAT: Float, BYTES: LargeBinary}[column.type]()


# Columns of each view (keys included), from its definition.
VIEW_COLUMNS: dict[str, dict[str, Any]] = {
    name: {column.name: _sql_type(column) for column in view.columns} for name, view in VIEWS.items()
}

# The speed tables also keep each view's mergeable partials (see lambdaflow.views.Increment): sums behind the
# averages and the HyperLogLog sketches behind the distinct counts.
SPEED_PARTIAL_COLUMNS: dict[str, dict[str, Any]] = {
    name: {column.name: _sql_type(column) for column in view.increment.partials}
    for name, view in VIEWS.items()
}

# The serving layer looks views up by one subject over a time range; these indexes make that a range scan,
# and, ending with the view's other keys, one that reads the rows in the answer's order (no sort).
_LOOKUPS: dict[str, tuple[str, ...]] = {
    name: (*view.lookup, *(key for key in view.keys if key not in view.lookup))
    for name, view in VIEWS.items()
    if view.lookup
}


def _view_table(prefix: str, view: str) -> Table:
    keys = set(VIEWS[view].keys)
    columns: list[Any] = [
        Column(name, kind, primary_key=name in keys, nullable=name not in keys)
        for name, kind in VIEW_COLUMNS[view].items()
    ]
    if view in _LOOKUPS:
        columns.append(Index(f"ix_{prefix}_{view}_lookup", *_LOOKUPS[view]))
    if prefix == "speed":  # the partials, and when the stream last changed the aggregate (freshness)
        partials = [Column(name, kind) for name, kind in SPEED_PARTIAL_COLUMNS[view].items()]
        updated_at = Column("updated_at", _TIME, nullable=False)
        # SQLite keeps a WITHOUT ROWID table's rows in its primary key's B-tree: an upsert changes one tree,
        # not the key's index and the table (small rows only, so not the views with HyperLogLog sketches)
        clustered = {"sqlite_with_rowid": False} if VIEWS[view].increment.sessions else {}
        return Table(f"{prefix}_{view}", metadata, *columns, *partials, updated_at, **clustered)
    # batch rows carry their day, not a wall-clock time, so republishing a day changes no byte
    day = Column("day", Date, nullable=False, index=True)
    return Table(f"{prefix}_{view}", metadata, *columns, day)


SPEED_TABLES: dict[str, Table] = {view: _view_table("speed", view) for view in VIEWS}
BATCH_TABLES: dict[str, Table] = {view: _view_table("batch", view) for view in VIEWS}

# The points of one subject (a view route's path column) on one published day, as the API writes them: a
# whole published day of a sensor is answered by copying one value instead of making and serializing Python
# values per row. Written with the day's rows, and made again from them by an upgrade (`derive_points`).
batch_points = Table(
    "batch_points",
    metadata,
    Column("view", String(64), primary_key=True),
    Column("subject", String(128), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("points", LargeBinary, nullable=False),  # the points' JSON objects, comma-separated, in order
)

# Events per window that reached Kafka more than the watermark after their event time: the speed layer
# dropped them, the batch layer counts them.
batch_late_events = Table(
    "batch_late_events",
    metadata,
    Column("window_start", _TIME, primary_key=True),
    Column("topic", String(128), primary_key=True),
    Column("events", BigInteger, nullable=False),
    Column("late_events", BigInteger, nullable=False),
    Column("day", Date, nullable=False, index=True),
)

horizons = Table(
    "horizons",
    metadata,
    Column("view", String(64), primary_key=True),
    Column("horizon", _TIME, nullable=False),  # the end of the newest published day (exclusive)
)

quality_runs = Table(
    "quality_runs",
    metadata,
    Column("day", Date, primary_key=True),
    Column("suite", String(128), primary_key=True),
    Column("success", Boolean, nullable=False),
    Column("statistics", Text, nullable=False),  # JSON: evaluated, successful, unsuccessful, percent
    Column("failed", Text, nullable=False),  # JSON: the failing expectations
    Column("link", String(1024)),  # the Data Docs page of the run
    Column("run_at", _TIME, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("rule", String(32), nullable=False),
    Column("ts", _TIME, nullable=False, index=True),
    Column("subject", String(128), nullable=False),  # sensor_id or session_id
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("event", Text, nullable=False),  # the triggering event (or session) as JSON
    Column("created_at", _TIME, nullable=False),
)

stream_progress = Table(
    "stream_progress",
    metadata,
    Column("query", String(64), primary_key=True),
    Column("batch_id", BigInteger, nullable=False),
    Column("input_rows", BigInteger, nullable=False),
    Column("invalid_rows", BigInteger, nullable=False),
    Column("late_rows", BigInteger, nullable=False),  # dropped behind the watermark, cumulative
    Column("max_event_ts", _TIME),
    Column("watermark", _TIME),
    Column("updated_at", _TIME, nullable=False),  # the stream's last report on the query
    # Added later, so nullable (see `_add_missing_columns`). Offsets are JSON, {"topic:partition": offset}.
    Column("end_offsets", Text),  # the broker's end of each partition the query reads
    Column("processed_offsets", Text),  # the next offset the query will process, per partition
    Column("lag_records", BigInteger),  # the sum of end - processed
    Column("progressed_at", _TIME),  # when the processed offsets last moved, or the lag was last 0
    Column("input_rows_per_second", Float),
    Column("processed_rows_per_second", Float),
    Column("batch_duration_ms", BigInteger),  # the last micro-batch's
    Column("alerts_fired", Text),  # JSON {rule: count}, cumulative
)

# The last micro-batch each speed query merged into the store, in the same transaction as its rows: a replayed
# batch (same checkpoint, same or lower id) is skipped, so every event counts once.
speed_commits = Table(
    "speed_commits",
    metadata,
    Column("query", String(128), primary_key=True),  # the checkpoint's directory name
    Column("checkpoint_id", String(64), nullable=False),  # the Spark query id kept in the checkpoint
    Column("batch_id", BigInteger, nullable=False),
    Column("committed_at", _TIME, nullable=False),
)

baselines = Table(
    "baselines",
    metadata,
    Column("sensor_id", String(128), primary_key=True),
    Column("hour_of_day", Integer, primary_key=True),
    Column("temperature_mean", Float, nullable=False),
    Column("temperature_std", Float, nullable=False),
    Column("samples", BigInteger, nullable=False),
    Column("computed_for", _TIME, nullable=False),
)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")  # first: the statements below may wait for a lock too
    # WAL: readers (serving) never block the streaming writer. The mode is kept in the file, and switching
    # to it needs the database to itself, so it is only asked for when the file is not in it yet.
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_engines: dict[str, Engine] = {}
_engines_pid = os.getpid()
_upgraded: set[str] = set()
_engines_lock = threading.Lock()


def engine(url: str, upgrade: bool = True) -> Engine:
    """The process's one engine for the store at `url`. With `upgrade`, the first call migrates the store to
    the current schema (lambdaflow.migrations). A forked child gets engines of its own: a pool's connections
    must not be shared across processes."""
    global _engines_pid
    with _engines_lock:
        if _engines_pid != os.getpid():
            for inherited in _engines.values():
                inherited.dispose(close=False)  # the parent's connections stay the parent's to close
            _engines.clear()  # the store the parent upgraded needs no second upgrade
            _engines_pid = os.getpid()
        if url not in _engines:
            _engines[url] = _new_engine(url)
        if upgrade and url not in _upgraded:
            migrations.upgrade(_engines[url], metadata, view_table_names(), derive_points)
            _upgraded.add(url)
        return _engines[url]


def _new_engine(url: str) -> Engine:
    # a server may drop idle connections (a restart, a proxy's timeout); a SQLite file's are never stale,
    # and a ping on every checkout costs each serving request a statement
    created = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if created.dialect.name == "sqlite":
        if created.url.database and created.url.database != ":memory:":
            Path(created.url.database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(created, "connect", _sqlite_pragmas)
    return created


def derive_points(connection: Any, tables: set[str]) -> None:
    """Make again the stored points of every published day of the views whose batch table is in `tables`:
    after an upgrade that may have changed what a point holds (a column added), or made the points table."""
    for view, batch in BATCH_TABLES.items():
        if batch.name not in tables or points.subject(view) is None:
            continue
        connection.execute(batch_points.delete().where(batch_points.c.view == view))
        days = connection.execute(select(batch.c.day).distinct().order_by(batch.c.day)).scalars().all()
        for day in days:
            rows = connection.execute(select(batch).where(batch.c.day == day)).mappings().all()
            _replace_points(connection, view, day, rows)
        if days:
            log.info("store: the %s points of %d published days made again", view, len(days))


def _replace_points(connection: Any, view: str, day: date, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store the day's points of each subject of `view`, in the order the API answers them."""
    connection.execute(batch_points.delete().where(batch_points.c.view == view, batch_points.c.day == day))
    subject = points.subject(view)
    if subject is None:
        return
    by_subject: dict[str, list[bytes]] = {}
    for row in sorted(rows, key=points.order_key(view)):
        by_subject.setdefault(row[subject], []).append(points.batch_point_json(view, row))
    insert_rows(connection, batch_points, [
        {"view": view, "subject": name, "day": day, "points": b",".join(found)}
        for name, found in by_subject.items()
    ])  # fmt: skip


def view_table_names() -> set[str]:
    """The tables derived from the view definitions (created and extended by the migrations' sync)."""
    return {table.name for table in (*SPEED_TABLES.values(), *BATCH_TABLES.values())}


def utc_naive(moment: datetime | None) -> datetime | None:
    """Timestamps are stored as naive UTC."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def stored_value(value: Any) -> Any:
    """A value as the store holds it (datetimes as naive UTC), e.g. to look a key up."""
    return utc_naive(value) if isinstance(value, datetime) else value


def _naive_utc(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: stored_value(v) for k, v in row.items()} for row in rows]


@dataclass(frozen=True)
class DriverQuery:
    """A select compiled once for a dialect and run on the driver's own cursor, its values and results
    converted by the statement's SQLAlchemy types: SQLAlchemy's per-execution work (its execution context,
    parameter and row processing) cost a serving request several times the database's answer."""

    sql: str
    order: tuple[str, ...] | None  # a positional paramstyle's parameter names, in order (else by name)
    constants: Mapping[str, Any]  # the statement's own values (literals), converted already
    binds: Mapping[str, Callable[[Any], Any]]  # the converters of the parameters that have one
    columns: tuple[str, ...]
    types: tuple[Any, ...]  # the columns' SQLAlchemy types for the dialect
    dialect: Any
    # per the driver's column type codes: (column index, converter) where one is needed
    results: dict[tuple[Any, ...], tuple[tuple[int, Callable[[Any], Any]], ...]] = field(default_factory=dict)

    @classmethod
    def compile(cls, statement: Any, dialect: Any) -> DriverQuery:
        compiled = statement.compile(dialect=dialect)
        # SQLAlchemy rewrites these at execution (IN lists, escaped names): the compiled string alone is wrong
        if compiled.post_compile_params or compiled.literal_execute_params or compiled.escaped_bind_names:
            raise ValueError("a DriverQuery has no expanding, literal-execute or escaped parameters")
        constants, binds = {}, {}
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                binds[name] = process
            if not bind.required:
                constants[name] = process(bind.effective_value) if process else bind.effective_value
        order = tuple(compiled.positiontup) if dialect.positional else None
        columns = tuple(column.key for column in statement.selected_columns)
        types = tuple(column.type.dialect_impl(dialect) for column in statement.selected_columns)
        return cls(compiled.string, order, constants, binds, columns, types, dialect)

    def _converters(self, description: Sequence[Any]) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
        """The result converters for the driver's column types (a type's converter may depend on them)."""
        codes = tuple(column[1] for column in description)
        if codes not in self.results:
            found = ((index, kind.result_processor(self.dialect, code))
                     for index, (kind, code) in enumerate(zip(self.types, codes, strict=True)))  # fmt: skip
            self.results[codes] = tuple((index, process) for index, process in found if process is not None)
        return self.results[codes]

    def run(self, engine: Engine, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows for `values` (a value for each required parameter), in one statement."""
        given = dict(self.constants)
        for name, value in values.items():
            process = self.binds.get(name)
            given[name] = process(value) if process is not None else value
        parameters = tuple([given[name] for name in self.order]) if self.order is not None else given
        dialect = engine.dialect
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self.sql, parameters)
                rows = cursor.fetchall()
                converters = self._converters(cursor.description)
            finally:
                cursor.close()
        except dialect.loaded_dbapi.Error as error:
            # as SQLAlchemy's own execution does: a lost connection leaves the pool; callers see its errors
            lost = dialect.is_disconnect(error, connection.dbapi_connection, None)
            if lost:
                connection.invalidate(error)
            raise DBAPIError.instance(self.sql, parameters, error, dialect.loaded_dbapi.Error,
                                      connection_invalidated=lost, dialect=dialect) from error  # fmt: skip
        finally:
            connection.close()  # back to the pool, which ends the transaction
        if not converters:
            return rows
        converted = []
        for row in rows:
            row = list(row)
            for index, process in converters:
                row[index] = process(row[index])
            converted.append(tuple(row))
        return converted


def _sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy's SQLite types store it: times as naive UTC text with microseconds, dates as ISO
    text; numbers, text, bytes and booleans as they are."""
    if isinstance(value, datetime):
        return utc_naive(value).isoformat(" ", "microseconds")
    if isinstance(value, date):
        return value.isoformat()
    return value


@cache
def _insert_statement(dialect: str, table: Table, columns: tuple[str, ...], on_conflict: str) -> Any:
    """An insert of `columns` into `table`; on a key already there it fails (`raise`), does nothing
    (`ignore`) or replaces the other columns (`update`). Built once per shape: an upsert's `excluded` builds
    a column collection each time, on every micro-batch's writes."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    if on_conflict == "ignore":
        return statement.on_conflict_do_nothing()
    if on_conflict == "update":
        keys = [column.name for column in table.primary_key.columns]
        updates = {name: statement.excluded[name] for name in columns if name not in keys}
        return statement.on_conflict_do_update(index_elements=keys, set_=updates)
    return statement


@cache
def _sqlite_insert(table: Table, columns: tuple[str, ...], on_conflict: str) -> tuple[str, tuple[str, ...]]:
    """The SQL of `_insert_statement` on SQLite, and the order of its parameters."""
    statement = _insert_statement("sqlite", table, columns, on_conflict)
    compiled = statement.compile(dialect=sqlite.dialect(), column_keys=list(columns))
    return compiled.string, tuple(compiled.positiontup)


def _insert_many(
    connection: Any, table: Table, rows: Sequence[Mapping[str, Any]], on_conflict: str, chunk: int = 2000
) -> int:
    """Insert rows (the keys of the first are the columns) in chunks; the rows changed. On SQLite the rows go
    to the driver as tuples of stored values: SQLAlchemy's per-row parameter processing cost more than
    SQLite's own writing."""
    if not rows:
        return 0
    columns, changed = tuple(rows[0]), 0
    dialect = connection.dialect.name
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        if dialect == "sqlite":
            sql, names = _sqlite_insert(table, columns, on_conflict)
            values = [tuple([_sqlite_value(row[name]) for name in names]) for row in part]
            result = connection.exec_driver_sql(sql, values)
        else:
            result = connection.execute(
                _insert_statement(dialect, table, columns, on_conflict), _naive_utc(part)
            )
        changed += max(result.rowcount, 0)
    return changed


def upsert_rows(connection: Any, table: Table, rows: Sequence[Mapping[str, Any]], chunk: int = 2000) -> int:
    """Insert rows, replacing every non-key column of rows whose primary key exists (in the caller's
    transaction). One statement, executed for many rows (a statement with every row's values inlined costs
    more to compile than to run)."""
    _insert_many(connection, table, rows, "update", chunk)
    return len(rows)


def upsert(engine: Engine, table: Table, rows: Sequence[Mapping[str, Any]], chunk: int = 2000) -> int:
    """`upsert_rows` in a transaction of its own."""
    if not rows:
        return 0
    with engine.begin() as connection:
        return upsert_rows(connection, table, rows, chunk)


def insert_new_rows(connection: Any, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert rows whose primary key is not there yet (alerts: a replay must not duplicate or rewrite)."""
    return _insert_many(connection, table, list(rows), "ignore")


def insert_new(engine: Engine, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
    """`insert_new_rows` in a transaction of its own."""
    with engine.begin() as connection:
        return insert_new_rows(connection, table, rows)


def publish_day(
    engine: Engine,
    day: date,
    views: Mapping[str, Sequence[Mapping[str, Any]]],
    late_events: Sequence[Mapping[str, Any]] = (),
    baselines_rows: Sequence[Mapping[str, Any]] | None = None,
) -> datetime:
    """Publish a recomputed day in one transaction: replace the day's rows in every `batch_<view>` table,
    advance each view's horizon to the end of the newest published day, and delete the speed rows older than
    the horizon (the batch rows now answer for them), with each subject's points for the API (see
    `batch_points`). Returns the day's end. Re-running a day leaves the store as it was."""
    end = datetime.combine(day + timedelta(days=1), time())
    with engine.begin() as connection:
        for view_name, rows in views.items():
            table = BATCH_TABLES[view_name]
            connection.execute(table.delete().where(table.c.day == day))
            insert_rows(connection, table, [{**row, "day": day} for row in rows])
            _replace_points(connection, view_name, day, rows)
            current = connection.execute(
                select(horizons.c.horizon).where(horizons.c.view == view_name)
            ).scalar()
            horizon = max(filter(None, [current, end]))
            if current is None:
                connection.execute(horizons.insert().values(view=view_name, horizon=horizon))
            else:
                connection.execute(
                    horizons.update().where(horizons.c.view == view_name).values(horizon=horizon)
                )
            speed = SPEED_TABLES[view_name]
            time_column = speed.c[VIEWS[view_name].time_column]
            connection.execute(speed.delete().where(time_column < horizon))
        connection.execute(batch_late_events.delete().where(batch_late_events.c.day == day))
        insert_rows(connection, batch_late_events, [{**row, "day": day} for row in late_events])
        if baselines_rows is not None:
            connection.execute(baselines.delete())
            insert_rows(connection, baselines, baselines_rows)
    return end


def insert_rows(connection: Any, table: Table, rows: Sequence[Mapping[str, Any]], chunk: int = 2000) -> None:
    """Insert rows in chunks (in the caller's transaction)."""
    _insert_many(connection, table, rows, "raise", chunk)
