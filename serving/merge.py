"""The Lambda merge: each view's windows before its horizon come from the batch table, later ones from the
speed table, and every row says which layer answered.

The horizon is the end of the newest published batch day. Publishing deletes the speed rows it covers, but a
late micro-batch can write one back, so the speed side is filtered on the horizon too. Both sides and the
horizon are read in one statement (a UNION ALL with the horizon as a scalar subquery), so an answer never
straddles a publish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from itertools import repeat
from typing import Any

from sqlalchemy import (
    Engine,
    ScalarSelect,
    Select,
    String,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql.selectable import CompoundSelect

from lambdaflow import store
from lambdaflow.views import VIEWS

# Columns the speed layer estimates with HyperLogLog sketches (exact in batch); the API marks them on speed
# points.
APPROXIMATE_IN_SPEED: dict[str, tuple[str, ...]] = {
    name: view.increment.approximate for name, view in VIEWS.items()
}


@dataclass(frozen=True)
class Merged:
    """A merged answer: the view's horizon (None before the first publish) and its rows, oldest first."""

    batch_as_of: datetime | None
    rows: list[dict[str, Any]]


def _side(table: Any, columns: Sequence[str], source: str, horizon: Any, conditions: list[Any]) -> Select:
    labels = (literal(source, String()).label("source"), horizon.label("batch_as_of"))
    return select(*(table.c[name] for name in columns), *labels).where(and_(*conditions))


def _horizon(view: str) -> ScalarSelect:
    return select(store.horizons.c.horizon).where(store.horizons.c.view == view).scalar_subquery()


@cache
def _merged_statement(view: str, equals: tuple[str, ...], at_least: tuple[str, ...]) -> CompoundSelect:
    """The merge of `view` for one shape of filters, built once with its values as bound parameters
    (`range_start`, `range_end`, `equals_<column>`, `at_least_<column>`): SQLAlchemy then keys and compiles
    it once, where building the statement per request cost more than SQLite's answer."""
    time_column = VIEWS[view].time_column
    columns = list(store.VIEW_COLUMNS[view])
    batch, speed = store.BATCH_TABLES[view], store.SPEED_TABLES[view]

    def filters(table: Any) -> list[Any]:
        return [
            *(table.c[name] == bindparam(f"equals_{name}") for name in equals),
            *(table.c[name] >= bindparam(f"at_least_{name}") for name in at_least),
        ]

    def in_range(column: Any) -> list[Any]:
        return [column >= bindparam("range_start"), column < bindparam("range_end")]

    # The horizon is a scalar subquery of the one statement: the rows and the `batch_as_of` they carry come
    # from one snapshot even while a publish commits. A NULL horizon selects no batch rows, every speed row.
    horizon = _horizon(view)
    batch_time, speed_time = batch.c[time_column], speed.c[time_column]
    batch_side = _side(batch, columns, "batch", horizon, [
        *in_range(batch_time), batch_time < horizon, *filters(batch)
    ])  # fmt: skip
    speed_side = _side(speed, columns, "speed", horizon, [
        *in_range(speed_time), or_(horizon.is_(None), speed_time >= horizon), *filters(speed)
    ])  # fmt: skip
    return union_all(batch_side, speed_side).order_by(
        time_column, *[c for c in VIEWS[view].keys if c != time_column]
    )


@cache
def _horizon_statement(view: str) -> Select:
    return select(_horizon(view))  # built once, like the merge


def horizon(engine: Engine, view: str) -> datetime | None:
    """The view's horizon now; None before its first publish."""
    with engine.connect() as connection:
        return connection.execute(_horizon_statement(view)).scalar()


def merged_view(
    engine: Engine,
    view: str,
    start: datetime,
    end: datetime,
    equals: Mapping[str, Any] | None = None,
    at_least: Mapping[str, float] | None = None,
) -> Merged:
    """The rows of `view` whose time column lies in [start, end) (naive UTC), filtered by column equality
    (`equals`) and lower bounds (`at_least`)."""
    equals, at_least = equals or {}, at_least or {}
    statement = _merged_statement(view, tuple(equals), tuple(at_least))
    values = {"range_start": start, "range_end": end,
              **{f"equals_{name}": value for name, value in equals.items()},
              **{f"at_least_{name}": value for name, value in at_least.items()}}  # fmt: skip
    with engine.connect() as connection:
        result = connection.execute(statement, values)
        # plain str, which orjson writes faster than SQLAlchemy's names; the last column, batch_as_of, is
        # left out (zip() stops before it)
        names = list(map(str, result.keys()))[:-1]
        found = result.all()
        # nothing found: nothing to be consistent with
        as_of = found[0][-1] if found else connection.execute(_horizon_statement(view)).scalar()
    # cheaper than .mappings(), slicing each row or a comprehension's zip() per row
    return Merged(as_of, list(map(dict, map(zip, repeat(names), found))))


def exists(engine: Engine, view: str, column: str, value: Any) -> bool:
    """Whether any batch or speed row of `view` has `column == value` (to tell "unknown" from "no data")."""
    with engine.connect() as connection:
        for table in (store.SPEED_TABLES[view], store.BATCH_TABLES[view]):
            found = connection.execute(select(literal(1)).where(table.c[column] == value).limit(1)).first()
            if found:
                return True
    return False


def sensors(engine: Engine) -> list[dict[str, Any]]:
    """Every sensor with its location and the newest window it reported in, from both layers."""
    rows: dict[tuple[str, str], datetime] = {}
    with engine.connect() as connection:
        for table in (store.BATCH_TABLES["sensor_stats"], store.SPEED_TABLES["sensor_stats"]):
            latest = select(table.c.sensor_id, table.c.location, func.max(table.c.window_start)).group_by(
                table.c.sensor_id, table.c.location
            )
            for sensor_id, location, newest in connection.execute(latest):
                key = (sensor_id, location)
                rows[key] = max(newest, rows.get(key, newest))
    return [
        {"sensor_id": sensor_id, "location": location, "last_window_start": newest}
        for (sensor_id, location), newest in sorted(rows.items())
    ]


def horizons(engine: Engine) -> dict[str, datetime | None]:
    with engine.connect() as connection:
        found = dict(connection.execute(select(store.horizons.c.view, store.horizons.c.horizon)).all())
    return {view: found.get(view) for view in VIEWS}


def alerts(engine: Engine, since: datetime | None, rule: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest alerts first."""
    table = store.alerts
    statement = select(table).order_by(table.c.ts.desc(), table.c.alert_id).limit(limit)
    if since is not None:
        statement = statement.where(table.c.ts >= since)
    if rule is not None:
        statement = statement.where(table.c.rule == rule)
    with engine.connect() as connection:
        return [dict(row) for row in connection.execute(statement).mappings()]


def quality_runs(engine: Engine, days: int) -> list[dict[str, Any]]:
    """The latest result of each suite for the newest `days` days that have any, newest day first."""
    table = store.quality_runs
    with engine.connect() as connection:
        newest = [day for (day,) in connection.execute(
            select(table.c.day).distinct().order_by(table.c.day.desc()).limit(days))]  # fmt: skip
        if not newest:
            return []
        statement = select(table).where(table.c.day.in_(newest)).order_by(table.c.day.desc(), table.c.suite)
        return [dict(row) for row in connection.execute(statement).mappings()]


def stream_progress(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        statement = select(store.stream_progress).order_by(store.stream_progress.c.query)
        return [dict(row) for row in connection.execute(statement).mappings()]
