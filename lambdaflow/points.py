"""A view row as the API answers it (a "point"), and its JSON: the store's columns less the route's subject,
the layer that answered (`source`), and for speed points the values only estimated (`approximate`).

Publishing a batch day stores each subject's points of the day (`store.batch_points`), so answering a
published day copies bytes instead of making and serializing Python values per row; the serving layer makes
the other points with the same functions, so both are the same bytes. A change to what a point's JSON holds
other than a view's new column needs a store revision: the upgrade that runs it makes the stored points again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

import orjson

from lambdaflow.views import VIEWS
from lambdaflow.views.model import FLOAT, INTEGER, TEXT, TIME

# Times as ISO-8601 UTC with a `Z`: the store keeps naive UTC.
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z

# Columns the speed layer estimates with HyperLogLog sketches (exact in batch).
APPROXIMATE_IN_SPEED: dict[str, tuple[str, ...]] = {
    name: view.increment.approximate for name, view in VIEWS.items()
}

# Each view's point columns, in the store's order: every column but the route's subject.
POINT_COLUMNS: dict[str, tuple[str, ...]] = {
    name: tuple(c.name for c in view.columns if view.route is None or c.name != view.route.subject)
    for name, view in VIEWS.items()
}

# Each view's order of points: its time column, then its other keys.
ORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    name: (view.time_column, *(k for k in view.keys if k != view.time_column)) for name, view in VIEWS.items()
}

_AS_STORED = {TIME: lambda v: v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v,
              INTEGER: lambda v: int(v) if float(v).is_integer() else v, FLOAT: float, TEXT: str}  # fmt: skip
_TYPES: dict[str, dict[str, Any]] = {
    name: {c.name: _AS_STORED[c.type] for c in view.columns if c.type in _AS_STORED}
    for name, view in VIEWS.items()
}


def subject(view: str) -> str | None:
    """The column a view's route selects one subject by (None: a route over every row)."""
    route = VIEWS[view].route
    return route.subject if route is not None else None


def _as_stored(view: str, row: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """`names` of a row as the store gives them back: an integer column's 3.0 is read back as 3, a float
    column's 3 as 3.0, a time as naive UTC."""
    types = _TYPES[view]
    found = ((name, row.get(name)) for name in names)
    return {
        name: value if value is None or name not in types else types[name](value) for name, value in found
    }


def order_key(view: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A sort key of a view's rows: the values of its `ORDER_COLUMNS` as the store gives them back."""
    return lambda row: tuple(_as_stored(view, row, ORDER_COLUMNS[view]).values())


def point(view: str, row: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The point of a row of `view` (a mapping with at least its point columns) answered by `source`."""
    made = {name: row[name] for name in POINT_COLUMNS[view]}
    made["source"] = source
    if source == "speed" and APPROXIMATE_IN_SPEED[view]:
        made["approximate"] = list(APPROXIMATE_IN_SPEED[view])
    return made


def json_bytes(value: Any) -> bytes:
    """JSON as the API answers it: times as ISO-8601 UTC with a `Z`, anything else orjson cannot write as
    its text."""
    return orjson.dumps(value, default=str, option=JSON_OPTIONS)


def point_json(view: str, row: Mapping[str, Any], source: str) -> bytes:
    return orjson.dumps(point(view, row, source), option=JSON_OPTIONS)


def batch_point_json(view: str, row: Mapping[str, Any]) -> bytes:
    """The JSON of a batch row's point as the API answers it once the row is stored: each value first made
    what the store gives back, so the bytes equal a point made from the stored row."""
    return point_json(view, _as_stored(view, row, POINT_COLUMNS[view]), "batch")
