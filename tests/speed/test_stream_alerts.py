"""Reading alerts through the real broker and Spark: strict thresholds, anomalies against the baselines,
one alert per breaking event in the store and on the alerts topic, nothing new on a full replay."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from lambdaflow import store
from speed.queries import checkpoint_of
from speed.streams import start_speed_query
from tests.conftest import run_cli, settings_env
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def reading(sensor: str, ts: datetime, temperature: float = 21.0, battery: float = 80.0) -> dict:
    return {"event_id": str(uuid.uuid4()), "sensor_id": sensor, "location": "lab",
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "temperature": temperature, "humidity": 40.0,
            "pressure": 1013.0, "battery": battery}  # fmt: skip


def test_alert_rules_fire_once_each_through_the_stream(spark, settings, tmp_path):
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    engine = store.engine(settings.resolved_store_url)
    baseline = {"sensor_id": "sensor-b", "hour_of_day": ts.hour, "temperature_mean": 20.0,
                "temperature_std": 1.0, "samples": 500, "computed_for": ts}  # fmt: skip
    store.upsert(engine, store.baselines, [baseline])
    events = {
        "at_temperature": reading("sensor-a", ts, temperature=30.0),
        "hot": reading("sensor-a", ts, temperature=30.01),
        "at_battery": reading("sensor-a", ts, battery=20.0),
        "low": reading("sensor-a", ts, battery=19.99),
        "at_z": reading("sensor-b", ts, temperature=23.0),
        "anomaly": reading("sensor-b", ts, temperature=23.5),
    }
    lines = [json.dumps(e) for e in events.values()] + [json.dumps(events["hot"]), "not json"]
    source = tmp_path / "readings.jsonl"
    source.write_text("\n".join(lines) + "\n")
    run_cli(["produce", "--from-file", str(source), "--topic", settings.topic_iot], settings_env(settings))

    expected = {
        ("temperature_high", events["hot"]["event_id"]),
        ("battery_low", events["low"]["event_id"]),
        ("temperature_anomaly", events["anomaly"]["event_id"]),
    }

    def stored() -> set[tuple[str, str]]:
        with engine.connect() as connection:
            rows = connection.execute(select(store.alerts)).mappings().all()
        return {(row["rule"], json.loads(row["event"])["event_id"]) for row in rows}

    for replay in (False, True):
        if replay:  # a full replay from the first offset: the same ids, so nothing new anywhere
            shutil.rmtree(checkpoint_of(settings, "iot_sensors", ("alerts",)))
        query = start_speed_query(spark, settings, "iot_sensors", ("alerts",), once=True)
        query.awaitTermination()
        assert query.exception() is None
        assert stored() == expected
        published = consume_all(settings.kafka_bootstrap_servers, settings.topic_alerts, 3)
        assert len(published) == 3
        assert {(json.loads(r.value)["rule"], r.key.decode()) for r in published} == {
            ("temperature_high", "sensor-a"),
            ("battery_low", "sensor-a"),
            ("temperature_anomaly", "sensor-b"),
        }
    with engine.connect() as connection:
        anomaly = connection.execute(
            select(store.alerts).where(store.alerts.c.rule == "temperature_anomaly")
        ).first()
    assert (anomaly.value, anomaly.threshold) == (3.5, 3.0)
