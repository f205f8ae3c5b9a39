"""The API's answers as marshmallow schemas: the OpenAPI document is generated from them, and the
Schemathesis test checks every answer against that document.

The views' answer schemas come from their definitions (`lambdaflow.views`: the route's subject, the store's
columns), so a new view or column is documented where it is defined. The handlers write JSON with orjson
directly (dumping through marshmallow would cost more than the query); the schemas are the contract those
answers are tested against.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import BigInteger, Date, DateTime, Float, Integer, String

from lambdaflow import store
from lambdaflow.alerts import RULES as ALERT_RULES
from lambdaflow.points import APPROXIMATE_IN_SPEED
from lambdaflow.views import VIEWS


class Strict(Schema):
    class Meta:
        unknown = RAISE  # additionalProperties: false, so an undocumented key fails the contract test


class Error(Strict):
    """Every error answer (4xx, 5xx)."""

    status = fields.Integer(required=True, metadata={"description": "The HTTP status code"})
    error = fields.String(required=True, metadata={"description": "What was wrong, in one line"})
    parameter = fields.String(metadata={"description": "The first bad query parameter"})
    parameters = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "Every bad query parameter and its problem"},
    )


def _field(kind: Any, nullable: bool) -> fields.Field:
    for sql_type, field in (
        (DateTime, fields.DateTime),
        (Date, fields.Date),
        (BigInteger, fields.Integer),
        (Integer, fields.Integer),
        (Float, fields.Float),
        (String, fields.String),
    ):
        if isinstance(kind, sql_type):
            return field(required=True, allow_none=nullable)
    raise TypeError(f"no API field for the store type {kind!r}")


def _point_schema(view: str, subject: tuple[str, ...]) -> type[Schema]:
    """One window (or session) of `view` as the API answers it: the store's columns less the subject's, the
    layer that answered, and the values a speed point only estimates."""
    keys = set(VIEWS[view].keys)
    columns = {
        name: _field(kind, nullable=name not in keys)
        for name, kind in store.VIEW_COLUMNS[view].items()
        if name not in subject
    }
    source = fields.String(
        required=True,
        validate=validate.OneOf(("batch", "speed")),
        metadata={"description": "The layer that answered"},
    )
    approximate = fields.List(
        fields.String(validate=validate.OneOf(APPROXIMATE_IN_SPEED[view])),
        metadata={"description": "Speed points: the values estimated by HyperLogLog"},
    )
    name = "".join(part.title() for part in view.split("_")) + "Point"
    return Strict.from_dict({**columns, "source": source, "approximate": approximate}, name=name)


def _metrics_schema(view: str, subject: tuple[str, ...] = ()) -> type[Schema]:
    point = _point_schema(view, subject)
    answer = {
        **{name: fields.String(required=True) for name in subject},
        "from": fields.DateTime(required=True),
        "to": fields.DateTime(required=True),
        "batch_as_of": fields.DateTime(
            required=True,
            allow_none=True,
            metadata={"description": "The view's horizon: points before it come from the batch layer"},
        ),
        "points": fields.List(fields.Nested(point), required=True),
    }
    name = "".join(part.title() for part in view.split("_")) + "Answer"
    return Strict.from_dict(answer, name=name)


# The answer of each view's route.
ANSWERS: dict[str, type[Schema]] = {
    name: _metrics_schema(name, (view.route.subject,) if view.route.subject else ())
    for name, view in VIEWS.items()
    if view.route is not None
}


class Sensor(Strict):
    sensor_id = fields.String(required=True)
    location = fields.String(required=True)
    last_window_start = fields.DateTime(required=True)


class Sensors(Strict):
    sensors = fields.List(fields.Nested(Sensor), required=True)


class Alert(Strict):
    alert_id = fields.String(required=True)
    rule = fields.String(required=True, validate=validate.OneOf(ALERT_RULES))
    ts = fields.DateTime(required=True, metadata={"description": "The triggering event's time"})
    subject = fields.String(required=True, metadata={"description": "sensor_id or session_id"})
    value = fields.Float(required=True)
    threshold = fields.Float(required=True)
    event = fields.Dict(required=True, metadata={"description": "The triggering event (or session)"})
    created_at = fields.DateTime(required=True)


class Alerts(Strict):
    alerts = fields.List(fields.Nested(Alert), required=True)


class QualityRun(Strict):
    day = fields.Date(required=True)
    suite = fields.String(required=True)
    success = fields.Boolean(required=True)
    statistics = fields.Dict(required=True)
    failed = fields.List(fields.Dict(), required=True)
    link = fields.String(required=True, allow_none=True, metadata={"description": "Its Data Docs page"})
    run_at = fields.DateTime(required=True)


class QualityRuns(Strict):
    runs = fields.List(fields.Nested(QualityRun), required=True)


class StoreHealth(Strict):
    ok = fields.Boolean(required=True)
    dialect = fields.String()
    error = fields.String()


class BatchHealth(Strict):
    horizons = fields.Dict(keys=fields.String(), values=fields.DateTime(allow_none=True), required=True)
    last_recompute = fields.DateTime(required=True, allow_none=True)
    last_quality_run = fields.DateTime(required=True, allow_none=True)


_OFFSETS = {"description": 'Per partition, {"topic:partition": offset}; {} before the first micro-batch'}


class QueryHealth(Strict):
    query = fields.String(required=True)
    status = fields.String(
        required=True,
        validate=validate.OneOf(("ok", "stalled", "down")),
        metadata={"description": "down: no report for stale_after_seconds; stalled: lag, and the processed "
                  "offsets not moving for as long"},
    )  # fmt: skip
    batch_id = fields.Integer(required=True)
    updated_at = fields.DateTime(required=True, metadata={"description": "The stream's last report"})
    seconds_since_update = fields.Float(required=True)
    seconds_since_progress = fields.Float(
        required=True,
        allow_none=True,
        metadata={"description": "Since the processed offsets last moved or the lag was last 0"},
    )
    end_offsets = fields.Dict(
        keys=fields.String(), values=fields.Integer(), required=True,
        metadata={**_OFFSETS, "title": "The broker's end offsets"},
    )  # fmt: skip
    processed_offsets = fields.Dict(
        keys=fields.String(), values=fields.Integer(), required=True,
        metadata={**_OFFSETS, "title": "The next offsets to process"},
    )  # fmt: skip
    lag_records = fields.Integer(
        required=True, allow_none=True, metadata={"description": "Records not processed yet: end - processed"}
    )
    max_event_ts = fields.DateTime(required=True, allow_none=True)
    watermark = fields.DateTime(required=True, allow_none=True)
    input_rows = fields.Integer(required=True)
    late_rows = fields.Integer(required=True)
    invalid_rows = fields.Integer(required=True)
    ok = fields.Boolean(required=True)


class StreamHealth(Strict):
    ok = fields.Boolean(required=True)
    stale_after_seconds = fields.Float()
    queries = fields.List(fields.Nested(QueryHealth), required=True)


class Health(Strict):
    status = fields.String(required=True, validate=validate.OneOf(("ok", "down")))
    time = fields.DateTime(required=True)
    store = fields.Nested(StoreHealth, required=True)
    batch = fields.Nested(BatchHealth)
    stream = fields.Nested(StreamHealth, required=True)
