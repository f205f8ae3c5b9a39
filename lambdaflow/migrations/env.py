"""Alembic's environment for the serving store: run on the connection `lambdaflow.migrations.config` hands
over, or (Alembic's own command line, e.g. `alembic revision --autogenerate`) on the configured store."""

from __future__ import annotations

from alembic import context

from lambdaflow import store
from lambdaflow.migrations import VERSION_TABLE

config = context.config
target_metadata = config.attributes.get("target_metadata") or store.metadata
view_tables = config.attributes.get("view_tables") or store.view_table_names()


def include_object(_object: object, name: str | None, kind: str, *_: object) -> bool:
    """The view tables follow the view definitions without revisions (see lambdaflow.migrations), so
    autogenerate leaves them out."""
    return kind != "table" or name not in view_tables


def run_migrations(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    # the view tables are synced against the database after the revisions: SQL written ahead would miss them
    raise SystemExit("the store's migrations run against the database (lambdaflow store upgrade), not as SQL")
connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    from lambdaflow.settings import load_settings

    with store.engine(load_settings().resolved_store_url, upgrade=False).connect() as own_connection:
        run_migrations(own_connection)
