"""Real-time alerts by the kernel's rules (`lambdaflow.alerts`): temperature above, battery below, sessions
longer than their thresholds, and temperature anomalies (|z| above a threshold against the per-sensor,
per-hour-of-day baseline that the batch layer computes).

A rule fires only strictly beyond its threshold. Each alert's id is a UUID5 of the rule and what it is about
(the event id, or the session id), so replaying a micro-batch produces the same ids and no duplicates.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from lambdaflow.alerts import READING_THRESHOLDS, Thresholds

ALERT_NAMESPACE = uuid.UUID("6f1d3c52-8a4e-4d4e-9a51-6c2b7f0e9d11")
Baselines = Mapping[tuple[str, int], tuple[float, float]]  # (sensor_id, hour of day) -> (mean, std)


@dataclass(frozen=True)
class Alert:
    alert_id: str
    rule: str
    ts: datetime
    subject: str
    value: float
    threshold: float
    event: str  # the triggering event or session, as JSON

    def row(self, created_at: datetime | None = None) -> dict[str, Any]:
        """The alert as a row of the store's `alerts` table."""
        row = {field.name: getattr(self, field.name) for field in fields(self)}  # asdict deep-copies: slow
        return {**row, "created_at": created_at or datetime.now(UTC)}


def alert_id(rule: str, subject_id: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{rule}|{subject_id}"))


def _json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def reading_alerts(event: Mapping[str, Any], thresholds: Thresholds, baselines: Baselines) -> list[Alert]:
    """Alerts that one valid IoT reading raises."""
    found = []
    payload = None

    def raise_alert(rule: str, value: float, threshold: float) -> None:
        nonlocal payload
        payload = payload or _json(event)
        found.append(Alert(alert_id(rule, event["event_id"]), rule, event["ts"], event["sensor_id"], value,
                           threshold, payload))  # fmt: skip

    for rule in READING_THRESHOLDS:
        if rule.breaks(event[rule.column], thresholds):
            raise_alert(rule.rule, event[rule.column], rule.limit(thresholds))
    baseline = baselines.get((event["sensor_id"], event["ts"].astimezone(UTC).hour))
    if baseline is not None:
        mean, std = baseline
        if std > 0:
            z = (event["temperature"] - mean) / std
            if abs(z) > thresholds.anomaly_z:
                raise_alert("temperature_anomaly", z, thresholds.anomaly_z)
    return found


def session_alerts(session: Mapping[str, Any], thresholds: Thresholds) -> list[Alert]:
    """The alert a session raises once it lasts longer than the threshold (one per session id)."""
    if session["duration_s"] <= thresholds.session_s:
        return []
    rule = "session_long"
    return [
        Alert(alert_id(rule, session["session_id"]), rule, session["session_end"], session["session_id"],
              session["duration_s"], thresholds.session_s, _json(session))
    ]  # fmt: skip
