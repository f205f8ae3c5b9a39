"""Distributed mode, without Docker: a Spark standalone master and one worker from the installed PySpark on
loopback, started with the commands docker-compose.yaml's services run (cli/services.py, one list); the
streaming application (the lake archiver and the speed queries) and a day's batch submit to it through
`LAMBDAFLOW_SPARK_MASTER`, with the store on PostgreSQL, and the views equal the ground truth. What breaks
only off local mode shows here: the Kafka source pickled to executors, the executors' Python, the dedupe's
jar shipped from the driver, the lake and the checkpoints written by executor processes."""

from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import select

from cli.services import BATCH_DAY, services
from lambdaflow import store
from lambdaflow.views import VIEWS
from tests import ground_truth
from tests.batch.test_recompute import assert_same, store_rows, topic_events
from tests.conftest import ROOT, new_database, run_cli, settings_env
from tests.speed.test_stream_restart import KILL_SETTINGS, kill_9_mid_stream_then_restart
from tests.speed.test_streams import compare, store_frame, topic_frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAULTS = ["--duplicates", "0.05", "--out-of-order", "0.1", "--malformed", "0.03"]
COUNT = 4000


@pytest.fixture
def store_database(postgres_url: str) -> str:
    return new_database(postgres_url)


def test_stream_and_batch_on_a_standalone_cluster_equal_the_ground_truth(
    spark_cluster, make_settings, store_database
):
    settings = make_settings(store_url=store_database, max_records_per_trigger=1000)
    env = {**settings_env(settings), "LAMBDAFLOW_STORE_URL": store_database,
           "LAMBDAFLOW_SPARK_MASTER": spark_cluster.url}  # fmt: skip
    before = len(spark_cluster.applications())
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", str(COUNT), "--rate", "0", "--seed", "27", *FAULTS], env)
    commands = services(spark_master=spark_cluster.url)

    # the stream service's command, with --once: everything the topics hold, then exit
    stream = subprocess.run(commands["stream"].local_command(("--once",)), env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert stream.returncode == 0, stream.stderr[-3000:]
    frames = {
        "iot_sensors": topic_frame(settings, settings.topic_iot, "iot_sensors", COUNT),
        "user_activity": topic_frame(settings, settings.topic_activity, "user_activity", COUNT),
    }
    for name, view in VIEWS.items():
        truth = ground_truth.VIEWS[name](ground_truth.clean_events(frames[view.contract]))
        compare(store_frame(settings, name), truth, name)
    progress = store.stream_progress
    with store.engine(store_database, upgrade=False).connect() as connection:
        rows = connection.execute(select(progress.c.query, progress.c.batch_id)).all()
    batches = {query: batch_id for query, batch_id in rows if query.startswith("speed_")}
    assert len(batches) == 2, batches
    assert all(batch_id >= 3 for batch_id in batches.values()), f"one micro-batch, no merge tested: {batches}"

    # the day most events fall on, recomputed from the lake the executors wrote
    events = {
        "iot_sensors": topic_events(settings, settings.topic_iot, "iot_sensors"),
        "user_activity": topic_events(settings, settings.topic_activity, "user_activity"),
    }
    day = events["iot_sensors"]["ts"].dt.date.mode()[0]
    batch = subprocess.run(BATCH_DAY.local_command(("--date", day.isoformat(), "--force")), env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert batch.returncode == 0, batch.stderr[-3000:]
    engine = store.engine(store_database, upgrade=False)
    for name, view in VIEWS.items():
        frame = events[view.contract]
        truth = ground_truth.VIEWS[name](ground_truth.clean_events(frame[frame["ts"].dt.date == day]))
        assert_same(store_rows(engine, store.BATCH_TABLES[name]), truth, list(view.keys))
    assert spark_cluster.applications()[before:] == ["lambdaflow-stream", "lambdaflow-batch"]


def test_kill_9_of_the_stream_on_the_cluster_then_a_restart_gives_the_ground_truth(
    spark_cluster, make_settings, store_database
):
    """The driver killed with its JVM and Python workers mid-stream: the worker loses the application's
    executors, and the restarted app resumes from the checkpoints the executors wrote."""
    settings = make_settings(store_url=store_database, **KILL_SETTINGS)
    env = {**settings_env(settings), "LAMBDAFLOW_STORE_URL": store_database,
           "LAMBDAFLOW_SPARK_MASTER": spark_cluster.url}  # fmt: skip
    before = len(spark_cluster.applications())
    kill_9_mid_stream_then_restart(settings, env)
    assert spark_cluster.applications()[before:] == ["lambdaflow-stream"] * 2  # killed, then restarted
