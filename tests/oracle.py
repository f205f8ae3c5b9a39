"""Ground truth for tests, written independently of `lambdaflow.contracts`: plain json and explicit rules."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta

IOT_RANGES = {"temperature": (-50, 100), "humidity": (0, 100), "pressure": (800, 1200), "battery": (0, 100)}
IOT_TEXT = ("sensor_id", "location")
ACTIVITY_TEXT = ("user_id", "session_id", "page", "browser")
EVENT_TYPES = {"login", "page_view", "add_to_cart", "purchase", "logout"}
UTC_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 128


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def is_valid(contract: str, value: bytes | None, kafka_ts: datetime, max_future_s: int = 300) -> bool:
    if value is None:
        return False
    try:
        event = json.loads(value)
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    try:
        uuid.UUID(event["event_id"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    if not isinstance(event.get("ts"), str) or not UTC_TS.match(event["ts"]):
        return False
    if parse_ts(event["ts"]) - kafka_ts > timedelta(seconds=max_future_s):
        return False
    if contract == "iot_sensors":
        return all(_text(event.get(k)) for k in IOT_TEXT) and all(
            _number(event.get(k)) and low <= event[k] <= high for k, (low, high) in IOT_RANGES.items()
        )
    if not all(_text(event.get(k)) for k in ACTIVITY_TEXT) or event.get("event_type") not in EVENT_TYPES:
        return False
    amount = event.get("amount")
    if event["event_type"] == "purchase":
        return _number(amount) and amount >= 0
    return amount is None
