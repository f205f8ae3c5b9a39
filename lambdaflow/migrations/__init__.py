"""Migrations of the serving store, with Alembic, configured in code (no alembic.ini needed at run time).

Two kinds of change, two mechanisms:
- Hand-written revisions in `versions/` (the first, `0001`, is the store as the release before migrations
  made it) for anything that is not purely additive: a dropped, renamed or retyped column, data rewrites.
- The view tables (`speed_<view>`, `batch_<view>`) are derived from the view definitions, so adding a view
  or a nullable column to one must not need a revision. After the revisions, `upgrade` compares those tables
  with the definitions (Alembic's autogenerate comparison) and applies the additive differences through
  Alembic's operations: missing tables, missing nullable columns, indexes made to match (they hold no data).
  Any other difference (a dropped or retyped column) is refused in one line: it needs a revision, because
  guessing how to move the data is how rows get lost. A revision that changes a view table must allow for the
  table not existing yet (a fresh store creates it only in the sync that follows the revisions).

A store made before migrations (tables, no version table) gets the additive differences of the baseline
(stream_progress's lag columns came late) and is stamped at the baseline; a fresh store is upgraded from
nothing. Processes that start together upgrade one at a time: PostgreSQL under an advisory lock held by the
upgrade's transaction, SQLite under a file lock beside the database; the version is read inside the lock, so
the later ones find the store at head and change nothing.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import produce_migrations
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.operations import ops as alembic_ops
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect

from lambdaflow.file_lock import lock_file

log = logging.getLogger(__name__)
# Alembic logs its set-up at INFO on every upgrade (the dialect, transactional DDL); what changed in the store
# is logged here instead. (Its plugins log as they are imported: the command line quiets those.)
logging.getLogger("alembic").setLevel(logging.WARNING)

SCRIPT_LOCATION = Path(__file__).parent
BASELINE = "0001"
# Not Alembic's default "alembic_version": Airflow's metadata keeps its own there, and a deployment may give
# Airflow and the store one PostgreSQL database.
VERSION_TABLE = "lambdaflow_store_version"
# One 64-bit key for every process that upgrades a store on this PostgreSQL database.
_ADVISORY_LOCK_KEY = zlib.crc32(b"lambdaflow.store.upgrade")


class SchemaChangeRefused(RuntimeError):
    """The store differs from the definitions in a way only a hand-written revision may change."""


def config(
    connection: Connection | None = None,
    target_metadata: MetaData | None = None,
    view_tables: Collection[str] = (),
) -> Config:
    """An Alembic configuration for the store's migrations (env.py runs them on `connection`)."""
    alembic_config = Config()
    alembic_config.set_main_option("script_location", str(SCRIPT_LOCATION))
    alembic_config.attributes.update(
        connection=connection, target_metadata=target_metadata, view_tables=set(view_tables)
    )
    return alembic_config


def head() -> str:
    return ScriptDirectory.from_config(config()).get_current_head() or ""


def current(engine: Engine) -> str | None:
    """The store's revision (None: never migrated)."""
    with engine.connect() as connection:
        return _context(connection).get_current_revision()


def upgrade(
    engine: Engine,
    metadata: MetaData,
    view_tables: Collection[str],
    derive: Callable[[Connection, set[str]], None] | None = None,
) -> None:
    """Bring the store to the newest revision, then add what the view definitions have and it lacks. What
    is derived from the view tables' rows is made again by `derive(connection, tables)`, in the same
    transaction, for the tables given columns, and for every view table after a revision ran."""
    with _exclusive(engine) as connection:
        context = _context(connection)
        was = context.get_current_revision()
        if was is None and inspect(connection).get_table_names():
            baseline = ScriptDirectory.from_config(config()).get_revision(BASELINE).module.schema()
            sync_additively(connection, baseline, set(baseline.tables))
            context.stamp(ScriptDirectory.from_config(config()), BASELINE)
            was = BASELINE
            log.info("store %s: made before migrations, stamped at the baseline", engine.url.database)
        command.upgrade(config(connection, metadata, view_tables), "head")
        now = context.get_current_revision()
        if now != was:
            log.info("store %s: upgraded from %s to %s", engine.url.database, was or "nothing", now)
        changes = sync_additively(connection, metadata, set(view_tables))
        extended = {c.table_name for c in changes if isinstance(c, alembic_ops.AddColumnOp)}
        changed = set(view_tables) if now != was else extended
        if derive is not None and changed:
            derive(connection, changed)


def _context(connection: Connection, **options: Any) -> MigrationContext:
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE, **options})


@contextmanager
def _exclusive(engine: Engine) -> Iterator[Connection]:
    """A connection in one transaction, which no other upgrade of the same store runs beside. For SQLite the
    lock is taken before connecting: a new store's first connections switch it to WAL, which needs the
    database to itself, so they must not meet another process's upgrade."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        upgrade_lock = Path(f"{engine.url.database}.upgrade-lock")
        with lock_file(upgrade_lock, wait_s=None), engine.connect() as connection, connection.begin():
            yield connection
        return
    with engine.connect() as connection, connection.begin():
        if connection.dialect.name == "postgresql":  # released when the transaction ends
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})")
        yield connection


def sync_additively(
    connection: Connection, metadata: MetaData, tables: Collection[str]
) -> list[alembic_ops.MigrateOperation]:
    """Make `tables` of the store match `metadata` where that only adds: create missing tables and nullable
    columns, create and drop indexes; the changes made. Anything else raises `SchemaChangeRefused` before
    any change."""

    def included(name: str | None, kind: str, *_: Any) -> bool:
        return kind != "table" or name in tables

    context = _context(
        connection,
        compare_type=True,
        include_name=included,
        include_object=lambda _object, name, kind, *_: included(name, kind),
    )
    changes = list(_flattened(produce_migrations(context, metadata).upgrade_ops.ops))
    refused = [_described(change) for change in changes if not _additive(change)]
    if refused:
        raise SchemaChangeRefused(
            "the store's tables differ from their definitions in ways only a hand-written revision in "
            f"lambdaflow/migrations/versions may change: {'; '.join(refused)}"
        )
    operations = Operations(context)
    for change in changes:
        operations.invoke(change)
    if changes:
        log.info("store: %s", "; ".join(map(_described, changes)))
    return changes


def _flattened(changes: list[alembic_ops.MigrateOperation]) -> Iterator[alembic_ops.MigrateOperation]:
    for change in changes:
        if isinstance(change, alembic_ops.OpContainer):
            yield from _flattened(change.ops)
        else:
            yield change


def _additive(change: alembic_ops.MigrateOperation) -> bool:
    if isinstance(change, alembic_ops.AddColumnOp):
        return change.column.nullable or change.column.server_default is not None
    return isinstance(change, (alembic_ops.CreateTableOp, alembic_ops.CreateIndexOp, alembic_ops.DropIndexOp))


def _described(change: alembic_ops.MigrateOperation) -> str:
    if isinstance(change, alembic_ops.CreateTableOp):
        return f"create table {change.table_name}"
    if isinstance(change, alembic_ops.CreateIndexOp | alembic_ops.DropIndexOp):
        verb = "create" if isinstance(change, alembic_ops.CreateIndexOp) else "drop"
        return f"{verb} index {change.index_name} on {change.table_name}"
    if isinstance(change, alembic_ops.AddColumnOp):
        nullable = "" if _additive(change) else "NOT NULL column without a default "
        return f"add {nullable}column {change.table_name}.{change.column.name}"
    if isinstance(change, alembic_ops.DropColumnOp):
        return f"drop column {change.table_name}.{change.column_name}"
    if isinstance(change, alembic_ops.AlterColumnOp):
        what = []
        if change.modify_type is not None:
            what.append(f"type {change.existing_type} -> {change.modify_type}")
        if change.modify_nullable is not None:
            what.append("nullable" if change.modify_nullable else "NOT NULL")
        return f"alter column {change.table_name}.{change.column_name} ({', '.join(what) or 'other'})"
    return " ".join(map(str, change.to_diff_tuple()))
