"""The Lambda merge: each view's windows before its horizon come from the batch table, later ones from the
speed table, and every row says which layer answered.

The horizon is the end of the newest published batch day. Publishing deletes the speed rows it covers, but a
late micro-batch can write one back, so the speed side is filtered on the horizon too. Both sides and the
horizon are read in one statement (a UNION ALL with the horizon as a scalar subquery), so an answer never
straddles a publish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Engine,
    LargeBinary,
    ScalarSelect,
    Select,
    String,
    and_,
    bindparam,
    func,
    literal,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.sql.selectable import CompoundSelect

from lambdaflow import points, store
from lambdaflow.views import VIEWS


@dataclass(frozen=True)
class Merged:
    """A merged answer: the view's horizon (None before the first publish) and its points' JSON, oldest
    first."""

    batch_as_of: datetime | None
    points: list[bytes]


def _horizon(view: str) -> ScalarSelect:
    return select(store.horizons.c.horizon).where(store.horizons.c.view == view).scalar_subquery()


def _merged_statement(
    view: str, equals: tuple[str, ...], at_least: tuple[str, ...], stored_days: bool
) -> CompoundSelect:
    """The merge of `view` for one shape of filters, with its values as bound parameters (`range_start`,
    `range_end`, `equals_<column>`, `at_least_<column>`, and with `stored_days` those of `_whole_days`):
    `_merged_query` builds and compiles it once per shape, where building it per request cost more than
    SQLite's answer.

    Its rows: stored points' JSON (the whole published days of one subject, see `store.batch_points`), or
    one row's point columns (the other rows); then the layer, the horizon and the view's keys to order by
    (as text: they are not read). The batch rows are read around the whole days in two ranges, which an
    index reads without visiting the rows between them."""
    time_column = VIEWS[view].time_column
    order = points.ORDER_COLUMNS[view]
    columns = points.POINT_COLUMNS[view]
    batch, speed, stored = store.BATCH_TABLES[view], store.SPEED_TABLES[view], store.batch_points
    subject = points.subject(view)

    def filters(table: Any) -> list[Any]:
        return [
            *(table.c[name] == bindparam(f"equals_{name}") for name in equals),
            *(table.c[name] >= bindparam(f"at_least_{name}") for name in at_least),
        ]

    def in_range(column: Any, start: str = "range_start", end: str = "range_end") -> list[Any]:
        return [column >= bindparam(start), column < bindparam(end)]

    def side(keys: list[Any], point: Any, values: list[Any], source: str, conditions: list[Any]) -> Select:
        return select(
            point.label("point"),
            *(value.label(name) for name, value in zip(columns, values, strict=True)),
            literal(source, String()).label("source"),
            horizon.label("batch_as_of"),
            *(type_coerce(key, String()).label(f"order_{i}") for i, key in enumerate(keys)),
        ).where(and_(*conditions))

    # The horizon is a scalar subquery of the one statement: the rows and the `batch_as_of` they carry come
    # from one snapshot even while a publish commits. A NULL horizon selects no batch rows, every speed row.
    horizon = _horizon(view)
    no_point = type_coerce(null(), LargeBinary())
    batch_time, speed_time = batch.c[time_column], speed.c[time_column]
    sides, batch_ranges = [], [("range_start", "range_end")]
    # A published day ends at or before the horizon: its stored points answer for it. publish_day writes a
    # day's rows and points in one transaction (and is the batch tables' only writer), an upgrade makes them
    # for days published before: a whole day's batch rows need not be read, only those around the days.
    if stored_days:
        # typed: the first side's types are the merged columns' (a time column's text read as a time)
        nothing = [type_coerce(null(), batch.c[name].type) for name in columns]
        no_keys = [null()] * (len(order) - 1)
        sides.append(side([stored.c.day, *no_keys], stored.c.points, nothing, "batch", [
            stored.c.view == view, stored.c.subject == bindparam(f"equals_{subject}"),
            *in_range(stored.c.day, "days_first", "days_last"), horizon.is_not(None),
        ]))  # fmt: skip
        batch_ranges = [("range_start", "before_days"), ("after_days", "range_end")]
    for start, end in batch_ranges:
        sides.append(side([batch.c[k] for k in order], no_point, [batch.c[n] for n in columns], "batch", [
            *in_range(batch_time, start, end), batch_time < horizon, *filters(batch)
        ]))  # fmt: skip
    sides.append(side([speed.c[k] for k in order], no_point, [speed.c[n] for n in columns], "speed", [
        *in_range(speed_time), or_(horizon.is_(None), speed_time >= horizon), *filters(speed)
    ]))  # fmt: skip
    merged = union_all(*sides)
    return merged.order_by(*(merged.selected_columns[f"order_{i}"] for i in range(len(order))))


def _whole_days(start: datetime, end: datetime) -> dict[str, Any]:
    """The whole days within [start, end) (`days_first` to `days_last`, none: an empty span), and the parts
    of the range before and after them (`range_start` to `before_days`, `after_days` to `range_end`)."""
    first = start.date() if start.time() == time() else start.date() + timedelta(days=1)
    last = max(first, end.date())
    before, after = datetime.combine(first, time()), datetime.combine(last, time())
    return {
        "days_first": first,
        "days_last": last,
        "before_days": min(before, end),
        "after_days": max(after, start),
    }


@cache
def _horizon_query(dialect: Any, view: str) -> store.DriverQuery:
    return store.DriverQuery.compile(select(_horizon(view)), dialect)


@cache
def _merged_query(
    dialect: Any, view: str, equals: tuple[str, ...], at_least: tuple[str, ...], stored_days: bool
) -> tuple[store.DriverQuery, dict[str, int]]:
    """The merge compiled for the dialect, and where its point, source and horizon columns are."""
    query = store.DriverQuery.compile(_merged_statement(view, equals, at_least, stored_days), dialect)
    return query, {name: query.columns.index(name) for name in ("point", "source", "batch_as_of")}


def horizon(engine: Engine, view: str) -> datetime | None:
    """The view's horizon now; None before its first publish."""
    return _horizon_query(engine.dialect, view).run(engine, {})[0][0]


def merged_view(
    engine: Engine,
    view: str,
    start: datetime,
    end: datetime,
    equals: Mapping[str, Any] | None = None,
    at_least: Mapping[str, float] | None = None,
    stored_points: bool = True,
) -> Merged:
    """The rows of `view` whose time column lies in [start, end) (naive UTC), filtered by column equality
    (`equals`) and lower bounds (`at_least`). One subject's whole published days are answered by their
    stored points unless not `stored_points` (then, as every other row, from their batch rows)."""
    equals, at_least = equals or {}, at_least or {}
    start, end = store.utc_naive(start), store.utc_naive(end)
    subject = points.subject(view)
    stored_days = stored_points and subject is not None and tuple(equals) == (subject,) and not at_least
    query, at = _merged_query(engine.dialect, view, tuple(equals), tuple(at_least), stored_days)
    values = {"range_start": start, "range_end": end, **_whole_days(start, end),
              **{f"equals_{name}": value for name, value in equals.items()},
              **{f"at_least_{name}": value for name, value in at_least.items()}}  # fmt: skip
    found = query.run(engine, values)
    # nothing found: nothing to be consistent with
    as_of = found[0][at["batch_as_of"]] if found else horizon(engine, view)
    columns, point, source = query.columns, at["point"], at["source"]

    def made(row: tuple[Any, ...]) -> bytes:
        return points.point_json(view, dict(zip(columns, row, strict=True)), row[source])

    return Merged(as_of, [row[point] if row[point] is not None else made(row) for row in found])


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
