"""Event contracts for `iot_sensors` and `user_activity`: the one validation used by producers and consumers.

An event's value is a JSON object. `validate_record` turns the raw bytes of a Kafka record into either a
valid event (a pydantic model) or the reason it breaks its contract; it never raises on bad input.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

_ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?$")
EVENT_TYPES = ("login", "page_view", "add_to_cart", "purchase", "logout")


def _utc_timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 string")
    if not _ISO_TIMESTAMP.match(value):
        raise ValueError("not an ISO-8601 timestamp (YYYY-MM-DDTHH:MM:SS.sssZ)")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO-8601 timestamp (YYYY-MM-DDTHH:MM:SS.sssZ)") from None
    if parsed.tzinfo is None or parsed.utcoffset() != timedelta(0):
        raise ValueError("must be UTC (end with Z)")
    return parsed.astimezone(UTC)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical_uuid(value: str) -> str:
    if _CANONICAL_UUID.fullmatch(value):  # what producers send: a match is cheaper than building a UUID
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("not a UUID") from None


# A JSON number: the models are strict, so pydantic's own float check (no Python call per field) refuses
# "21.5" (a string) and true; `_reason` words its error as the contract does.
Number = float
EventId = Annotated[str, AfterValidator(_canonical_uuid)]
Timestamp = Annotated[datetime, BeforeValidator(_utc_timestamp)]
NAME_LENGTH = (1, 128)
Name = Annotated[str, Field(min_length=NAME_LENGTH[0], max_length=NAME_LENGTH[1])]
# Inclusive ranges of the numeric fields (None: unbounded); the columnar validation reads them too.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (-50, 100),
    "humidity": (0, 100),
    "pressure": (800, 1200),
    "battery": (0, 100),
    "amount": (0, None),
}


def _in_range(name: str) -> Any:
    low, high = RANGES[name]
    return Annotated[Number, Field(ge=low, le=high)]


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    event_id: EventId
    ts: Timestamp


class IotReading(Event):
    sensor_id: Name
    location: Name
    temperature: _in_range("temperature")
    humidity: _in_range("humidity")
    pressure: _in_range("pressure")
    battery: _in_range("battery")


class UserActivity(Event):
    user_id: Name
    session_id: Name
    event_type: Literal[EVENT_TYPES]
    page: Name
    browser: Name
    amount: _in_range("amount") | None = None

    @model_validator(mode="after")
    def _amount_only_on_purchase(self) -> UserActivity:
        if (self.event_type == "purchase") != (self.amount is not None):
            raise ValueError(
                "amount: required on purchase"
                if self.event_type == "purchase"
                else "amount: only on purchase"
            )
        return self


# Arrow schemas of a valid event's columns, in contract order (`ts` as a UTC timestamp).
_TS = pa.timestamp("us", tz="UTC")
ARROW_SCHEMAS: dict[str, pa.Schema] = {
    "iot_sensors": pa.schema(
        [("event_id", pa.string()), ("sensor_id", pa.string()), ("location", pa.string()), ("ts", _TS)]
        + [(name, pa.float64()) for name in ("temperature", "humidity", "pressure", "battery")]
    ),
    "user_activity": pa.schema(
        [(name, pa.string()) for name in ("event_id", "user_id", "session_id")]
        + [("ts", _TS)]
        + [(name, pa.string()) for name in ("event_type", "page", "browser")]
        + [("amount", pa.float64())]
    ),
}
MODELS: dict[str, type[Event]] = {"iot_sensors": IotReading, "user_activity": UserActivity}


def contract_for(topic: str, topic_map: dict[str, str] | None = None) -> str:
    """The contract name (`iot_sensors` or `user_activity`) of a topic, through an optional renaming map."""
    name = (topic_map or {}).get(topic, topic)
    if name not in MODELS:
        raise KeyError(f"no event contract for topic {topic!r}")
    return name


def _reason(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    if error["type"] == "json_invalid":
        return f"invalid JSON: {error['ctx'].get('error', error['msg'])}"
    if error["type"] == "model_type":
        return "not a JSON object"
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"{field}: missing"
    if error["type"] == "float_type":
        return f"{field}: must be a JSON number"
    message = error["msg"].removeprefix("Value error, ")
    if field and message.startswith(f"{field}:"):
        return message
    return f"{field}: {message}" if field else message


def validate_record(
    contract: str, value: bytes | str | None, ingest_time: datetime, max_future: timedelta
) -> tuple[Event | None, str | None]:
    """Validate one record's value against a contract: `(event, None)` or `(None, reason)`; never raises.

    `ingest_time` is the Kafka record's timestamp, so replaying a record always gives the same answer.
    """
    if value is None:
        return None, "empty value (tombstone)"
    try:
        event = MODELS[contract].model_validate_json(value)
    except ValidationError as exc:
        return None, _reason(exc)
    ahead = event.ts - ingest_time
    if ahead > max_future:
        return None, f"ts: {ahead.total_seconds():.0f} s ahead of ingest time (limit {max_future.seconds} s)"
    return event, None


def event_row(event: Event) -> dict[str, object]:
    """A valid event as a row of its contract's Arrow schema (float fields as floats, `ts` as datetime)."""
    return event.model_dump()


_second_prefix: dict[str, object] = {"key": None, "text": ""}


def format_ts(moment: datetime) -> str:
    """Event time as every producer writes it: ISO-8601 UTC with milliseconds, e.g. `…T12:00:00.123Z`."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    second = moment.replace(microsecond=0)
    if _second_prefix["key"] != second:  # strftime is slow; events of the same second share the prefix
        _second_prefix["key"], _second_prefix["text"] = second, second.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_second_prefix['text']}{moment.microsecond // 1000:03d}Z"
