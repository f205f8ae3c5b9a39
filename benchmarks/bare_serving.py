"""The serving benchmark's floor: `GET /api/v1/sensors/<id>/metrics?from=…&to=…` answered by a bare WSGI
function over `sqlite3` — the same statement and the same JSON as the app, without Flask, flask-smorest,
marshmallow or SQLAlchemy — under the same server settings as `lambdaflow serve`:
`python -m benchmarks.bare_serving DATABASE --port P`. What a user could get by hand; the app's figure over
this one is what the framework costs. It answers only that route, and only well-formed requests."""

from __future__ import annotations

import argparse
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

_COLUMNS = ("window_start", "sensor_id", "location", "events", "temperature_avg", "temperature_min",
            "temperature_max", "humidity_avg", "pressure_avg", "battery_min")  # fmt: skip
_HORIZON = "(SELECT horizon FROM horizons WHERE view = 'sensor_stats')"
_SELECTED = ", ".join(_COLUMNS)
# The app's merge for one sensor: batch rows before the horizon, speed rows from it on, the horizon with them.
SQL = f"""
SELECT {_SELECTED}, 'batch' AS source, {_HORIZON} AS batch_as_of FROM batch_sensor_stats
 WHERE window_start >= :start AND window_start < :end AND window_start < {_HORIZON} AND sensor_id = :sensor
UNION ALL
SELECT {_SELECTED}, 'speed' AS source, {_HORIZON} AS batch_as_of FROM speed_sensor_stats
 WHERE window_start >= :start AND window_start < :end AND ({_HORIZON} IS NULL OR window_start >= {_HORIZON})
   AND sensor_id = :sensor
ORDER BY window_start, sensor_id, location
"""
# Point keys: the columns less the subject, then the layer; the answer's times as ISO-8601 UTC with a Z.
_POINT_KEYS = (*(name for name in _COLUMNS if name != "sensor_id"), "source")
_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _stored(moment: str) -> str:
    """A query time as the store keeps it: naive UTC text with microseconds."""
    parsed = datetime.fromisoformat(moment)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed.isoformat(" ", "microseconds")


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
        start, end = query["from"][0], query["to"][0]
        found = connection().execute(SQL, {"start": _stored(start), "end": _stored(end), "sensor": sensor})
        points, batch_as_of = [], None
        for row in found:
            point = dict(zip(_POINT_KEYS, row[:1] + row[2:11], strict=True))
            point["window_start"] = datetime.fromisoformat(point["window_start"])
            points.append(point)
            batch_as_of = row[11]
        if batch_as_of is None:  # no row: the horizon alone
            horizon = connection().execute(_HORIZON[1:-1]).fetchone()
            batch_as_of = horizon and horizon[0]
        horizon = datetime.fromisoformat(batch_as_of) if batch_as_of else None
        answer = {"sensor_id": sensor, "from": _utc(start), "to": _utc(end), "batch_as_of": horizon,
                  "points": points}  # fmt: skip
        body = orjson.dumps(answer, option=_JSON_OPTIONS)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

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
    args = parser.parse_args()
    options = ServerOptions.from_settings(load_settings(), "127.0.0.1", args.port)
    run_server(partial(create_app, args.database), options, "lambdaflow bare serve")


if __name__ == "__main__":
    main()
