"""Query-parameter schemas of the API: parsing, defaults, and the cross-field checks that make a 400."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from lambdaflow.store import utc_naive

DEFAULT_RANGE = timedelta(hours=24)
MAX_RANGE = timedelta(days=31)
ALERT_RULES = ("temperature_high", "battery_low", "session_long", "temperature_anomaly")


class UtcDateTime(fields.DateTime):
    """An ISO-8601 time; one without a zone is UTC. Deserialized to naive UTC, as the store keeps times."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        return utc_naive(moment.replace(tzinfo=moment.tzinfo or UTC))  # type: ignore[return-value]


class TimeRange(Schema):
    """`from`/`to` (ISO-8601, `to` exclusive); `to` defaults to now and `from` to 24 hours before `to`."""

    start = UtcDateTime(data_key="from", metadata={"description": "Start (inclusive); UTC if no zone"})
    end = UtcDateTime(data_key="to", metadata={"description": "End (exclusive), default now"})

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        start, end = data.get("start"), data.get("end")
        if start is not None and end is not None:
            if start >= end:
                raise ValidationError("must be before 'to'", field_name="from")
            if end - start > MAX_RANGE:
                raise ValidationError(f"the range may span at most {MAX_RANGE.days} days", field_name="from")

    @post_load
    def _defaults(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if data.get("end") is None:
            data["end"] = utc_naive(datetime.now(UTC))
            if data.get("start") is not None and data["start"] >= data["end"]:
                raise ValidationError("must be in the past when 'to' is not given", field_name="from")
        if data.get("start") is None:
            data["start"] = data["end"] - DEFAULT_RANGE
        return data


class ActivityQuery(TimeRange):
    event_type = fields.String(validate=validate.Length(1, 32), metadata={"description": "e.g. purchase"})
    browser = fields.String(validate=validate.Length(1, 128))


class SessionsQuery(TimeRange):
    """Sessions that started in [from, to)."""

    min_duration_s = fields.Float(validate=validate.Range(min=0), metadata={"description": "Seconds"})


class AlertsQuery(Schema):
    since = UtcDateTime(metadata={"description": "Alerts whose event time is at or after this"})
    rule = fields.String(validate=validate.OneOf(ALERT_RULES))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class QualityQuery(Schema):
    days = fields.Integer(load_default=7, validate=validate.Range(1, 366),
                          metadata={"description": "How many of the newest validated days"})  # fmt: skip
