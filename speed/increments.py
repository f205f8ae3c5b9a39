"""Merging a micro-batch's partial rows into the stored ones (pure Python over plain rows).

Each view's `Increment` (lambdaflow.views) says how: windowed views combine the partials of a key column by
column and derive their averages and distinct counts; sessions merge as intervals, per `session_id` and
`user_id`, when they come closer than the gap (the rule of Spark's session windows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import datasketches

from lambdaflow.views import HLL_LG_K, Increment, Latest

Row = dict[str, Any]


def aware(moment: datetime) -> datetime:
    """Stored times are naive UTC; Spark's are aware."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def _union(sketches: Iterable[bytes]) -> datasketches.hll_sketch:
    union = datasketches.hll_union(HLL_LG_K)
    for sketch in sketches:
        union.update(datasketches.hll_sketch.deserialize(sketch))
    return union.get_result()


def combine(increment: Increment, old: Mapping[str, Any], new: Mapping[str, Any]) -> Row:
    """Two partial rows of one key as one."""
    row = dict(new)
    for latest in increment.latest:  # before the maxes: the order columns may be among them
        if _order(latest, old) > _order(latest, new):
            for column in (latest.value, *latest.order):
                row[column] = old[column]
    for column in increment.sums:
        row[column] = old[column] + new[column]
    for column in increment.mins:
        row[column] = min(old[column], new[column])
    for column in increment.maxes:
        row[column] = max(old[column], new[column])
    for sketch, _ in increment.sketches:
        row[sketch] = _union([old[sketch], new[sketch]]).serialize_compact()
    return row


def _order(latest: Latest, row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(aware(row[name]) if isinstance(row[name], datetime) else row[name] for name in latest.order)


def finish(increment: Increment, row: Row) -> Row:
    """Derive the view's averages and distinct counts from a row's partials."""
    for average, total in increment.averages:
        row[average] = row[total] / row[increment.count]
    for sketch, count in increment.sketches:
        row[count] = round(datasketches.hll_sketch.deserialize(row[sketch]).get_estimate())
    return row


def merge_windows(
    increment: Increment, keys: tuple[str, ...], stored: Iterable[Mapping[str, Any]], new: Iterable[Row]
) -> list[Row]:
    """The merged rows of every key in `new` (a key's partials at most once in `new`)."""
    by_key = {_key(row, keys): row for row in stored}
    merged = []
    for row in new:
        old = by_key.get(_key(row, keys))
        merged.append(finish(increment, dict(row) if old is None else combine(increment, old, row)))
    return merged


def combine_by_key(increment: Increment, keys: tuple[str, ...], rows: Iterable[Row]) -> list[Row]:
    """Partial rows with one row per key, those of a key combined (e.g. finer windows rolled up)."""
    by_key: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        key = _key(row, keys)
        old = by_key.get(key)
        by_key[key] = row if old is None else combine(increment, old, row)
    return list(by_key.values())


def _key(row: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(aware(row[k]) if isinstance(row[k], datetime) else row[k] for k in keys)


def merge_sessions(
    increment: Increment, stored: Iterable[Mapping[str, Any]], new: Iterable[Row], gap_s: float
) -> list[Row]:
    """Every session of the `session_id`s in `new`: stored and new partial sessions merged per
    (session_id, user_id). A part joins the session before it when it starts less than the gap after that
    session's end; the merged rows' times are aware UTC."""
    new = list(new)
    touched = {row["session_id"] for row in new}
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in chain(stored, new):
        if row["session_id"] in touched:
            groups.setdefault((row["session_id"], row["user_id"]), []).append(row)
    gap = timedelta(seconds=gap_s)
    merged: list[Row] = []
    for parts in groups.values():
        if len(parts) > 1:
            parts.sort(key=lambda part: aware(part["session_start"]))
        current: Row | None = None
        for part in parts:
            start, end = aware(part["session_start"]), aware(part["session_end"])
            if current is not None and start - current["session_end"] < gap:
                current["session_end"] = max(current["session_end"], end)
                for column in increment.sums:
                    current[column] += part[column]
            else:
                current = {**part, "session_start": start, "session_end": end}
                merged.append(current)
    for session in merged:
        session["duration_s"] = (session["session_end"] - session["session_start"]).total_seconds()
    return merged
