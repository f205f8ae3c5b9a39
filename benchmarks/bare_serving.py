"""The serving benchmark's floor: `GET /api/v1/sensors/<id>/metrics?from=…&to=…` answered by a bare WSGI
function over `sqlite3` — the same statement and the same JSON as the app (batch rows' stored points
copied), without Flask, flask-smorest, marshmallow or SQLAlchemy — under the same server settings as
`lambdaflow serve`: `python -m benchmarks.bare_serving DATABASE --port P`. What a user could get by hand; the
app's figure over this one is what the framework costs. It answers only that route, and only well-formed
requests. With `--in-flask`, the same function is the one route of a plain Flask app (no hooks, no argument
parsing, no SQLAlchemy): what Flask's own request handling costs that answer."""

from __future__ import annotations

import argparse
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from flask import Flask, Response, request

_COLUMNS = ("window_start", "sensor_id", "location", "events", "temperature_avg", "temperature_min",
            "temperature_max", "humidity_avg", "pressure_avg", "battery_min")  # fmt: skip
# Point keys: the columns less the subject, then the layer; the answer's times as ISO-8601 UTC with a Z.
_POINT_COLUMNS = tuple(name for name in _COLUMNS if name != "sensor_id")
_POINT_KEYS = (*_POINT_COLUMNS, "source")
_HORIZON = "(SELECT horizon FROM horizons WHERE view = 'sensor_stats')"
_ORDER = "window_start, sensor_id, location"
_SELECTED = ", ".join(_POINT_COLUMNS)
_NO_COLUMNS = ", ".join(["NULL"] * len(_POINT_COLUMNS))


def _batch(start: str, end: str) -> str:
    return f"""SELECT NULL, {_SELECTED}, 'batch', {_HORIZON}, {_ORDER} FROM batch_sensor_stats
 WHERE window_start >= :{start} AND window_start < :{end} AND window_start < {_HORIZON}
   AND sensor_id = :sensor"""


# The app's merge for one sensor: the stored points of the whole published days in the range, the batch rows
# before and after them, the speed rows from the horizon on, each with the horizon, in the view's key order.
SQL = f"""
SELECT points, {_NO_COLUMNS}, 'batch', {_HORIZON}, day, NULL, NULL FROM batch_points
 WHERE view = 'sensor_stats' AND subject = :sensor AND day >= :first AND day < :last
UNION ALL {_batch("start", "before")}
UNION ALL {_batch("after", "end")}
UNION ALL SELECT NULL, {_SELECTED}, 'speed', {_HORIZON}, {_ORDER} FROM speed_sensor_stats
 WHERE window_start >= :start AND window_start < :end AND ({_HORIZON} IS NULL OR window_start >= {_HORIZON})
   AND sensor_id = :sensor
ORDER BY 13, 14, 15
"""
_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _stored(moment: str) -> str:
    """A query time as the store keeps it: naive UTC text with microseconds."""
    parsed = datetime.fromisoformat(moment)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed.isoformat(" ", "microseconds")


def _whole_days(start: str, end: str) -> dict[str, str]:
    """The whole days in [start, end) and the parts of the range before and after them, as stored text."""
    start_day, end_day = date.fromisoformat(start[:10]), date.fromisoformat(end[:10])
    first = start_day if start[11:] == "00:00:00.000000" else start_day + timedelta(days=1)
    last = max(first, end_day)
    before, after = f"{first} 00:00:00.000000", f"{last} 00:00:00.000000"
    return {"first": str(first), "last": str(last), "before": min(before, end), "after": max(after, start)}


def create_app(database: str) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    local = threading.local()  # one connection per server thread, as a pool would give

    def connection() -> sqlite3.Connection:
        if not hasattr(local, "connection"):
            local.connection = sqlite3.connect(database)
            local.connection.execute("PRAGMA busy_timeout=10000")
        return local.connection

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sensor = unquote(environ["PATH_INFO"].split("/")[4])  # /api/v1/sensors/<id>/metrics
        query = parse_qs(environ.get("QUERY_STRING", ""))
        start, end = _stored(query["from"][0]), _stored(query["to"][0])
        found = connection().execute(
            SQL, {"start": start, "end": end, "sensor": sensor, **_whole_days(start, end)}
        )
        points, batch_as_of = [], None
        for row in found:  # the stored points or the point's columns, source, batch_as_of, the order
            if row[0] is not None:
                points.append(row[0])
            else:
                point = dict(zip(_POINT_KEYS, row[1:11], strict=True))
                point["window_start"] = datetime.fromisoformat(point["window_start"])
                points.append(orjson.dumps(point, option=_JSON_OPTIONS))
            batch_as_of = row[11]
        if batch_as_of is None:  # no row: the horizon alone
            horizon = connection().execute(_HORIZON[1:-1]).fetchone()
            batch_as_of = horizon and horizon[0]
        horizon = datetime.fromisoformat(batch_as_of) if batch_as_of else None
        answer = {"sensor_id": sensor, "from": _utc(query["from"][0]), "to": _utc(query["to"][0]),
                  "batch_as_of": horizon,
                  "points": orjson.Fragment(b"[%s]" % b",".join(points))}  # fmt: skip
        body = orjson.dumps(answer, option=_JSON_OPTIONS)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def create_flask_app(database: str) -> Flask:
    """The bare function as the one route of a plain Flask app, its answer passed on as it is (in the app's
    response class, which hands Granian a body held in memory in one piece)."""
    from serving.app import ServingResponse

    answer = create_app(database)
    app = Flask(__name__)
    app.response_class = ServingResponse

    @app.get("/api/v1/sensors/<sensor_id>/metrics")
    def metrics(sensor_id: str) -> Response:
        started: list[Any] = []
        body = answer(request.environ, lambda status, headers: started.extend((status, headers)))
        return app.response_class(body, status=started[0], headers=started[1])

    return app


def _utc(moment: str) -> datetime:
    parsed = datetime.fromisoformat(moment)
    return parsed.astimezone(UTC) if parsed.tzinfo is not None else parsed


def main() -> None:
    from lambdaflow.settings import load_settings
    from serving.server import ServerOptions, run_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("database")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--in-flask", action="store_true", help="the function as a plain Flask app's route")
    args = parser.parse_args()
    options = ServerOptions.from_settings(load_settings(), "127.0.0.1", args.port)
    factory = create_flask_app if args.in_flask else create_app
    run_server(partial(factory, args.database), options, "lambdaflow bare serve")


if __name__ == "__main__":
    main()
