"""`lambdaflow stream` against a real broker: the offsets it records as processed are the broker's ends once
it has read what was produced, with no lag; it keeps reporting while idle (so /health keeps it ok); and its
metrics port answers with the same numbers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from lambdaflow import store
from lambdaflow.broker import free_port
from tests.conftest import LAMBDAFLOW, ROOT, run_cli, settings_env
from tests.kafka_helpers import consume_all
from tests.oracle import is_valid

pytestmark = pytest.mark.integration
RECORDS = 400


def progress(settings) -> dict | None:
    engine = store.engine(settings.resolved_store_url, upgrade=False)  # the app creates the tables
    try:
        table = store.stream_progress
        with engine.connect() as connection:
            query = select(table).where(table.c.query == "speed_iot_sensors")
            row = connection.execute(query).mappings().first()
    except DBAPIError:
        row = None
    finally:
        engine.dispose()
    return dict(row) if row else None


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_stream_records_the_broker_offsets_it_processed_and_serves_them(make_settings):
    settings = make_settings()
    port = free_port()
    env = {**settings_env(settings), "LAMBDAFLOW_STREAM_METRICS_PORT": str(port)}
    run_cli(
        ["produce", "iot", "--count", str(RECORDS), "--rate", "0", "--seed", "5", "--malformed", "0.05"], env
    )
    records = consume_all(settings.kafka_bootstrap_servers, settings.topic_iot, RECORDS)
    ends = {}
    for record in records:
        key = f"{settings.topic_iot}:{record.partition}"
        ends[key] = max(ends.get(key, 0), record.offset + 1)
    invalid = sum(not is_valid("iot_sensors", record.value, record.timestamp) for record in records)
    assert len(records) == RECORDS and len(ends) > 1 and invalid > 0

    app = subprocess.Popen([*LAMBDAFLOW, "stream", "--only", "sensor_stats"], env=env, cwd=ROOT,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while (row := progress(settings)) is None or json.loads(row["processed_offsets"] or "{}") != ends:
            assert app.poll() is None, app.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"the stream did not process the {RECORDS} records: {row}"
            time.sleep(0.5)
        assert json.loads(row["end_offsets"]) == ends and row["lag_records"] == 0
        assert row["invalid_rows"] == invalid

        # idle now: it still reports (Spark's idle events and the broker probe), with no lag
        caught_up = row["updated_at"]
        while (row := progress(settings))["updated_at"] <= caught_up:
            assert time.monotonic() < deadline + 30, "the idle stream stopped reporting"
            time.sleep(0.5)
        assert row["lag_records"] == 0 and json.loads(row["processed_offsets"]) == ends

        metrics = scrape(port)
        query = (("query", "speed_iot_sensors"),)
        assert metrics[("lambdaflow_stream_lag_records", query)] == 0
        assert metrics[("lambdaflow_stream_invalid_rows_total", query)] == invalid
        for key, end in ends.items():
            topic, _, partition = key.rpartition(":")
            labels = (("partition", partition), ("query", "speed_iot_sensors"), ("topic", topic))
            assert metrics[("lambdaflow_stream_processed_offset", labels)] == end
            assert metrics[("lambdaflow_stream_end_offset", labels)] == end
        assert metrics[("lambdaflow_stream_batch_duration_seconds", query)] > 0
        assert ("process_cpu_seconds_total", ()) in metrics  # the driver's own
    finally:
        app.send_signal(signal.SIGINT)
        _, stderr = app.communicate(timeout=150)
    assert app.returncode == 0, stderr[-3000:]
