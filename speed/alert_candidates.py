"""Which alerts a micro-batch raises that the store lacks: the readings that may break a rule (filtered in
Spark, so only those reach the driver, where `speed.alerts` decides), the per-sensor baselines the anomaly
rule compares with (the batch layer's, read from the store), and the alerts not stored yet, each once (a
replayed micro-batch raises the same alert ids)."""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from sqlalchemy import select

from lambdaflow import store
from lambdaflow.views.spark import breaks_a_threshold, built_once
from speed.alerts import Alert, Baselines, Thresholds
from speed.view_writes import in_chunks


def stored_baselines(connection: Any) -> Baselines:
    return {
        (row.sensor_id, row.hour_of_day): (row.temperature_mean, row.temperature_std)
        for row in connection.execute(store.baselines.select())
    }


READING_COLUMNS = (
    "event_id",
    "sensor_id",
    "location",
    "ts",
    "temperature",
    "humidity",
    "pressure",
    "battery",
)


def reading_alert_candidates(
    batch: DataFrame, thresholds: Thresholds, baselines: Baselines
) -> list[dict[str, Any]]:
    """The readings of a micro-batch that may break a rule (filtered in Spark; the rules decide)."""
    breaking = breaks_a_threshold(thresholds)
    rows = [(sensor, hour, mean, std) for (sensor, hour), (mean, std) in baselines.items() if std > 0]
    if rows:  # anomalies: join the (small) baselines and keep readings beyond |z|
        frame = batch.sparkSession.createDataFrame(
            rows, "b_sensor string, b_hour int, b_mean double, b_std double"
        )
        batch = batch.join(
            F.broadcast(frame), (batch.sensor_id == frame.b_sensor) & (F.hour("ts") == frame.b_hour), "left"
        )
        z = F.abs((F.col("temperature") - F.col("b_mean")) / F.col("b_std"))
        breaking = breaking | (F.col("b_std").isNotNull() & (z > thresholds.anomaly_z))
    return batch.where(breaking).select(*_reading_columns()).toArrow().to_pylist()


@built_once
def _reading_columns() -> tuple[Column, ...]:
    return tuple(F.col(name) for name in READING_COLUMNS)


def new_alerts(connection: Any, alerts: list[Alert]) -> list[Alert]:
    """The alerts the store does not have yet, each once."""
    table, known = store.alerts, set()
    for chunk in in_chunks(sorted({alert.alert_id for alert in alerts})):
        known |= set(
            connection.execute(select(table.c.alert_id).where(table.c.alert_id.in_(chunk))).scalars()
        )
    return list({alert.alert_id: alert for alert in alerts if alert.alert_id not in known}.values())
