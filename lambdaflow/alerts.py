"""The alert rules, defined once: their names and thresholds, and which reading values the threshold rules
compare. The speed layer applies them, the serving layer lists them, and a view may count the readings that
break them.

A rule fires only strictly beyond its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from lambdaflow.settings import Settings

RULES = ("temperature_high", "battery_low", "session_long", "temperature_anomaly")


@dataclass(frozen=True)
class Thresholds:
    temperature_c: float = 30.0
    battery_pct: float = 20.0
    session_s: float = 300.0
    anomaly_z: float = 3.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            settings.alert_temperature_c, settings.alert_battery_pct, settings.alert_session_s,
            settings.alert_anomaly_z,
        )  # fmt: skip


@dataclass(frozen=True)
class ReadingThreshold:
    """A rule that compares one value of a reading with a fixed threshold: fires above it (`above`) or below
    it."""

    rule: str
    column: str
    above: bool
    threshold: str  # the `Thresholds` field

    def limit(self, thresholds: Thresholds) -> float:
        return getattr(thresholds, self.threshold)

    def breaks(self, value: float, thresholds: Thresholds) -> bool:
        limit = self.limit(thresholds)
        return value > limit if self.above else value < limit


# The rules a single reading breaks without a baseline (the anomaly rule needs the batch layer's baselines).
READING_THRESHOLDS = (
    ReadingThreshold("temperature_high", "temperature", above=True, threshold="temperature_c"),
    ReadingThreshold("battery_low", "battery", above=False, threshold="battery_pct"),
)
