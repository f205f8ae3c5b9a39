"""A micro-batch's view rows in the store: each view's partial rows merged with the stored rows of the same
keys (windows by key, sessions by session id, through `speed.increments`), then written in the caller's
transaction, upserted by key after deleting the stored rows a merge replaced. Keys go to the store in IN
lists of bounded length (`in_chunks`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_

from lambdaflow import store
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS
from speed.increments import merge_sessions, merge_windows

IN_CHUNK = 500  # keys per IN list


@dataclass
class MergedView:
    """A view's rows merged with the stored ones, and the stored keys they replace (sessions whose start moved
    as they merged: their rows are deleted, the rest upserted in place)."""

    rows: list[dict[str, Any]]
    replaced: list[tuple[Any, ...]] = field(default_factory=list)


def merge_view(
    connection: Any, settings: Settings, view: str, rows: list[dict[str, Any]], rebuild: bool = False
) -> MergedView:
    """One view's partial rows merged with the stored ones of the same keys (none when `rebuild`); for
    sessions, every session of the session ids in `rows`."""
    table, definition = store.SPEED_TABLES[view], VIEWS[view]
    stored: list[Any] = []
    if definition.increment.sessions:
        ids = sorted({row["session_id"] for row in rows})
        for chunk in in_chunks([] if rebuild else ids):
            stored += _dicts(connection.execute(select(table).where(table.c.session_id.in_(chunk))))
        merged = merge_sessions(definition.increment, stored, rows, settings.session_gap_seconds)
        kept = {(row["session_id"], row["session_start"].replace(tzinfo=None)) for row in merged}  # UTC
        stale = {(row["session_id"], row["session_start"]) for row in stored} - kept
        return MergedView(merged, sorted(stale))
    keys = [table.c[name] for name in definition.keys]
    wanted = sorted({tuple(store.stored_value(row[name]) for name in definition.keys) for row in rows})
    for chunk in in_chunks([] if rebuild else wanted):
        stored += _dicts(connection.execute(select(table).where(tuple_(*keys).in_(chunk))))
    return MergedView(merge_windows(definition.increment, definition.keys, stored, rows))


def _dicts(result: Any) -> list[dict[str, Any]]:
    """A result's rows as plain dicts (SQLAlchemy's RowMapping is slow to copy, and the merges copy them)."""
    names = list(result.keys())
    return [dict(zip(names, row, strict=True)) for row in result]


def write_view(connection: Any, view: str, merged: MergedView, now: datetime) -> None:
    """Write a view's merged rows (in the caller's transaction): upserted by key, after deleting the stored
    rows they replace (sessions whose start moved): deleting and reinserting every merged row would rewrite
    far more of the store than upserting it in place."""
    table = store.SPEED_TABLES[view]
    keys = [table.c[name] for name in VIEWS[view].keys]
    for chunk in in_chunks(merged.replaced):
        connection.execute(table.delete().where(tuple_(*keys).in_(chunk)))
    store.upsert_rows(connection, table, [{**row, "updated_at": now} for row in merged.rows])


def in_chunks(items: list[Any]) -> Iterator[list[Any]]:
    """`items` in lists of at most `IN_CHUNK`, one IN list of a query each."""
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
