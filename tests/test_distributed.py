"""Distributed mode, without Docker: a Spark standalone master and one worker from the installed PySpark on
loopback, started with the commands docker-compose.yaml's services run (cli/services.py, one list); the
streaming application (the lake archiver and the speed queries) and a day's batch submit to it through
`LAMBDAFLOW_SPARK_MASTER`, with the store on PostgreSQL, and the views equal the ground truth. What breaks
only off local mode shows here: the Kafka source pickled to executors, the executors' Python, the dedupe's
jar shipped from the driver, the lake and the checkpoints written by executor processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from cli.services import BATCH_DAY, services
from lambdaflow import store
from lambdaflow.broker import free_port
from lambdaflow.views import VIEWS
from tests import ground_truth
from tests.batch.test_recompute import assert_same, store_rows, topic_events
from tests.conftest import ROOT, run_cli, settings_env
from tests.speed.test_streams import compare, store_frame, topic_frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAULTS = ["--duplicates", "0.05", "--out-of-order", "0.1", "--malformed", "0.03"]
COUNT = 4000
WORKER_CORES = 2


def _alive_workers(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as answer:
            return int(json.load(answer).get("aliveworkers", 0))
    except OSError:
        return 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone master and one worker (2 cores, 2 GiB) on 127.0.0.1; yields the master's URL. Where they
    listen is environment, as in docker-compose.yaml, so their commands are the services' commands."""
    base = tmp_path_factory.mktemp("spark-cluster")
    port, web_port = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    commands = services(spark_master=url)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(base)}
    master_env = {**env, "SPARK_MASTER_HOST": "127.0.0.1", "SPARK_MASTER_PORT": str(port),
                  "SPARK_MASTER_WEBUI_PORT": str(web_port)}  # fmt: skip
    # the executors' Python workers import the project (installed in the image; here from the checkout)
    worker_env = {**env, "SPARK_WORKER_CORES": str(WORKER_CORES), "SPARK_WORKER_MEMORY": "2g",
                  "SPARK_WORKER_WEBUI_PORT": str(free_port()), "SPARK_WORKER_DIR": str(base / "work"),
                  "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}  # fmt: skip
    started = []
    try:
        for name, service_env in (("spark-master", master_env), ("spark-worker", worker_env)):
            with (base / f"{name}.log").open("w") as log:
                command = commands[name].local_command()
                process = subprocess.Popen(command, env=service_env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)  # fmt: skip
                started.append(process)
        deadline = time.monotonic() + 120
        while _alive_workers(web_port) < 1:
            exited = [p.args for p in started if p.poll() is not None]
            assert not exited and time.monotonic() < deadline, (
                f"the Spark cluster did not come up (logs in {base}): {exited}"
            )
            time.sleep(0.5)
        yield url
    finally:
        for process in reversed(started):
            _stop(process)


@pytest.fixture
def store_database(postgres_url: str) -> str:
    """A database of its own on the session's PostgreSQL, as the compose file's store is."""
    name = f"lambdaflow_{uuid.uuid4().hex[:12]}"
    with create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def test_stream_and_batch_on_a_standalone_cluster_equal_the_ground_truth(
    spark_cluster, make_settings, store_database, tmp_path: Path
):
    settings = make_settings(store_url=store_database, max_records_per_trigger=1000)
    env = {**settings_env(settings), "LAMBDAFLOW_STORE_URL": store_database,
           "LAMBDAFLOW_SPARK_MASTER": spark_cluster}  # fmt: skip
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", str(COUNT), "--rate", "0", "--seed", "27", *FAULTS], env)
    commands = services(spark_master=spark_cluster)

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
