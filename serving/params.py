"""Query-parameter schemas of the API: parsing, defaults, and the cross-field checks that make a 400.

Every value is checked before any arithmetic on it: times must lie in a range whose default neighbours (24
hours either side, any UTC offset) are representable, and numbers are ASCII digits only (Python's `int` and
`float` also accept Arabic-Indic and other Unicode digits).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate

from lambdaflow.alerts import RULES as ALERT_RULES
from lambdaflow.store import utc_naive
from lambdaflow.views import View
from lambdaflow.views.model import TEXT

DEFAULT_RANGE = timedelta(hours=24)
MAX_RANGE = timedelta(days=31)
# A day inside datetime's years on both ends, so a default range or a UTC offset never leaves them.
EARLIEST_TIME = datetime(1, 1, 3)
LATEST_TIME = datetime(9999, 12, 29)


def _ascii(value: Any) -> Any:
    if isinstance(value, str) and not value.isascii():
        raise ValidationError("must be written with ASCII characters (digits 0-9)")
    return value


class UtcDateTime(fields.DateTime):
    """An ISO-8601 time; one without a zone is UTC. Deserialized to naive UTC, as the store keeps times."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(_ascii(value), attr, data, **kwargs)
        naive = moment.replace(tzinfo=None)
        if not EARLIEST_TIME <= naive <= LATEST_TIME:
            raise ValidationError(f"must lie between {EARLIEST_TIME.date()} and {LATEST_TIME.date()}")
        return utc_naive(moment.replace(tzinfo=moment.tzinfo or UTC))  # type: ignore[return-value]


class AsciiInteger(fields.Integer):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        return super()._deserialize(_ascii(value), attr, data, **kwargs)


class FiniteFloat(fields.Float):
    """A finite number in ASCII digits (no `nan`, `inf` or `1e999`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        number = super()._deserialize(_ascii(value), attr, data, **kwargs)
        if not math.isfinite(number):
            raise ValidationError("must be a finite number")
        return number


class NoQuery(Schema):
    """No parameters: any given is unknown, so a 400."""


class TimeRange(Schema):
    """`from`/`to` (ISO-8601, `to` exclusive); `to` defaults to now and `from` to 24 hours before `to`. The
    resulting range, defaults included, is ordered and spans at most 31 days."""

    start = UtcDateTime(
        data_key="from",
        metadata={"description": "Start (inclusive); UTC if no zone; default 24 hours before `to`"},
    )
    end = UtcDateTime(
        data_key="to",
        metadata={
            "description": "End (exclusive), default now; the range must be ordered and span at most 31 days"
        },
    )

    @post_load
    def _defaults(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        given_end = data.get("end") is not None
        if not given_end:
            data["end"] = utc_naive(datetime.now(UTC))
        if data.get("start") is None:
            data["start"] = data["end"] - DEFAULT_RANGE
        start, end = data["start"], data["end"]
        if start >= end:
            raise ValidationError(
                "must be before 'to'" if given_end else "must be in the past when 'to' is not given",
                field_name="from",
            )
        if end - start > MAX_RANGE:
            raise ValidationError(
                f"the range may span at most {MAX_RANGE.days} days"
                + ("" if given_end else " ('to' defaults to now)"),
                field_name="from",
            )
        return data


def view_query(view: View) -> type[Schema]:
    """A view route's query: the time range and the route's filters (text as long as its column at most,
    numbers finite and at least their `minimum`)."""
    assert view.route is not None
    filters: dict[str, fields.Field] = {}
    for found in view.route.filters:
        metadata = {"description": found.description} if found.description else {}
        column = view.column(found.column)
        if column.type == TEXT:
            filters[found.name] = fields.String(validate=validate.Length(1, column.length), metadata=metadata)
        else:
            bound = [validate.Range(min=found.minimum)] if found.minimum is not None else []
            filters[found.name] = FiniteFloat(validate=bound, metadata=metadata)
    name = "".join(part.title() for part in view.name.split("_")) + "Query"
    return TimeRange.from_dict(filters, name=name)


class AlertsQuery(Schema):
    since = UtcDateTime(metadata={"description": "Alerts whose event time is at or after this"})
    rule = fields.String(validate=validate.OneOf(ALERT_RULES))
    limit = AsciiInteger(load_default=100, validate=validate.Range(1, 1000))


class QualityQuery(Schema):
    days = AsciiInteger(
        load_default=7,
        validate=validate.Range(1, 366),
        metadata={"description": "How many of the newest validated days"},
    )
