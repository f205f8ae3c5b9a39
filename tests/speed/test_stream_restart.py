"""kill -9 the streaming application mid-stream and restart it: the views equal the ground truth and no
alert is stored twice or lost. Ctrl-C stops it cleanly, and a restart resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from lambdaflow import store
from lambdaflow.spark import ROCKSDB_STATE_STORE
from speed.queries import CHECKPOINTS
from tests import ground_truth
from tests.conftest import LAMBDAFLOW, ROOT, run_cli, settings_env
from tests.kafka_helpers import consume_all
from tests.speed.test_streams import compare, store_frame, topic_frame

pytestmark = pytest.mark.integration
QUERIES = "sensor_stats,location_stats,activity_stats,alerts"
FAULTS = ["--duplicates", "0.05", "--out-of-order", "0.1", "--malformed", "0.03"]


def batches_done(settings) -> int:
    """The last batch of the IoT speed query; read-only, so it never races the app's table creation."""
    engine = store.engine(settings.resolved_store_url, upgrade=False)
    table = store.stream_progress
    try:
        with engine.connect() as connection:
            query = select(table.c.batch_id).where(table.c.query == "speed_iot_sensors")
            row = connection.execute(query).first()
    except DBAPIError:  # the app has not created its tables yet
        row = None
    finally:
        engine.dispose()
    return row.batch_id if row else -1


# micro-batches small and frequent enough that the kill lands mid-stream
KILL_SETTINGS = {"max_records_per_trigger": 1000, "trigger_seconds": 0.2}


def test_kill_9_mid_stream_then_restart(make_settings, store_url):
    settings = make_settings(**KILL_SETTINGS, **({"store_url": store_url} if store_url else {}))
    env = settings_env(settings)
    if store_url:
        env["LAMBDAFLOW_STORE_URL"] = store_url
    kill_9_mid_stream_then_restart(settings, env)


def kill_9_mid_stream_then_restart(settings, env: dict[str, str]) -> None:
    """The app killed with its JVM and workers after a few micro-batches, then run again with --once: the
    views equal the ground truth and every alert is stored and published exactly once. (The distributed test
    runs it on a Spark cluster.)"""
    producers = [
        subprocess.Popen([*LAMBDAFLOW, "produce", kind, "--count", "6000", "--rate", "1000", *FAULTS],
                         env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        for kind in ("iot", "activity")
    ]  # fmt: skip
    app = subprocess.Popen([*LAMBDAFLOW, "stream", "--only", QUERIES], env=env, cwd=ROOT,
                           start_new_session=True, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    while batches_done(settings) < 3:
        assert time.monotonic() < deadline, "the streaming application made no progress"
        time.sleep(0.3)
    os.killpg(app.pid, signal.SIGKILL)  # driver, JVM and Python workers, mid-stream
    app.wait()
    for producer in producers:
        assert producer.wait(timeout=120) == 0

    run_cli(["stream", "--once", "--only", QUERIES], env)
    # the dedupe state was in RocksDB, which recovered from the kill
    checkpoints = sorted((settings.checkpoint_dir / CHECKPOINTS).glob("speed_*"))
    assert len(checkpoints) == 2, checkpoints
    for checkpoint in checkpoints:
        metadata = json.loads((checkpoint / "offsets" / "0").read_text().splitlines()[1])
        assert metadata["conf"]["spark.sql.streaming.stateStore.providerClass"] == ROCKSDB_STATE_STORE

    for view, topic, contract in (
        ("sensor_stats", settings.topic_iot, "iot_sensors"),
        ("location_stats", settings.topic_iot, "iot_sensors"),
        ("activity_stats", settings.topic_activity, "user_activity"),
    ):
        events = ground_truth.clean_events(topic_frame(settings, topic, contract, 6000))
        compare(store_frame(settings, view), ground_truth.VIEWS[view](events), view)

    readings = ground_truth.clean_events(topic_frame(settings, settings.topic_iot, "iot_sensors", 6000))
    expected = {("temperature_high", e) for e in readings.loc[readings.temperature > 30, "event_id"]} | {
        ("battery_low", e) for e in readings.loc[readings.battery < 20, "event_id"]
    }
    assert expected, "the simulated readings raised no alert: the check below would prove nothing"
    with store.engine(settings.resolved_store_url).connect() as connection:
        rows = connection.execute(select(store.alerts)).mappings().all()
    assert {(row["rule"], json.loads(row["event"])["event_id"]) for row in rows} == expected
    published = consume_all(settings.kafka_bootstrap_servers, settings.topic_alerts, len(expected))
    assert {json.loads(record.value)["alert_id"] for record in published} == {row["alert_id"] for row in rows}


def test_ctrl_c_stops_the_queries_cleanly_and_a_restart_resumes(make_settings):
    settings = make_settings(max_records_per_trigger=1000, trigger_seconds=0.2)
    env = settings_env(settings)
    producer = subprocess.Popen([*LAMBDAFLOW, "produce", "iot", "--count", "6000", "--rate", "1000", *FAULTS],
                                env=env, cwd=ROOT, stderr=subprocess.DEVNULL)  # fmt: skip
    app = subprocess.Popen([*LAMBDAFLOW, "stream", "--only", "sensor_stats"], env=env, cwd=ROOT,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 180
    while batches_done(settings) < 2:
        assert time.monotonic() < deadline, "the streaming application made no progress"
        time.sleep(0.3)
    app.send_signal(signal.SIGINT)  # mid-stream: the producer is still sending
    _, stderr = app.communicate(timeout=150)
    assert app.returncode == 0, stderr[-3000:]
    assert "stopping the streaming queries (speed_iot_sensors)" in stderr
    for broken in ("Traceback", "StackOverflowError", "KeyboardInterrupt"):
        assert broken not in stderr, stderr[-3000:]
    assert producer.wait(timeout=120) == 0

    run_cli(["stream", "--once", "--only", "sensor_stats"], env)

    events = ground_truth.clean_events(topic_frame(settings, settings.topic_iot, "iot_sensors", 6000))
    compare(store_frame(settings, "sensor_stats"), ground_truth.VIEWS["sensor_stats"](events), "sensor_stats")
