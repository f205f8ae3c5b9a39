"""The batch DAG: it imports cleanly with the expected graph, and `airflow dags test` over a lake built by
the real archiver publishes rows equal to the ground truth and copies the day to Azurite (blobs equal to the
lake's files, the manifest last); a corrupt day fails the raw gate and publishes nothing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from ingestion.archiver import start_archiver
from lambdaflow import store
from lambdaflow.views import VIEWS
from serving import merge
from tests import ground_truth
from tests.batch.test_recompute import assert_same, dump, store_rows, topic_events
from tests.conftest import run_cli, settings_env
from tests.dags.conftest import airflow

CHAIN = ["wait_for_lake", "validate_raw", "recompute", "validate_views", "reconcile", "publish",
         "build_data_docs", "export_to_azure"]  # fmt: skip


def test_dagbag_imports_without_errors_and_has_the_task_chain():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(__import__("tests.conftest").conftest.ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["lambdaflow_batch"]
    assert [t.task_id for t in dag.topological_sort()] == CHAIN
    for upstream, downstream in itertools.pairwise(CHAIN):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.max_active_runs == 1 and dag.catchup
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.get_task("wait_for_lake").mode == "reschedule"
    assert all(task.retries == 2 and task.retry_exponential_backoff for task in dag.tasks)


@pytest.mark.integration
def test_airflow_dags_test_publishes_the_ground_truth_and_a_corrupt_day_publishes_nothing(
    spark, settings, airflow_env
):
    day = (datetime.now(UTC) - timedelta(days=3)).date()
    start = f"{day}T23:00:00Z"  # events from D 23:00 to D+1 00:40: the lake is complete for D
    env = settings_env(settings)
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", "3000", "--rate", "0.5", "--start", start, "--seed", "8",
                 "--duplicates", "0.05", "--out-of-order", "0.1", "--malformed", "0.03"], env)  # fmt: skip
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()

    airflow(["dags", "test", "lambdaflow_batch", day.isoformat()], airflow_env)

    engine = store.engine(settings.resolved_store_url)
    frames = {
        "iot_sensors": topic_events(settings, settings.topic_iot, "iot_sensors", 3000),
        "user_activity": topic_events(settings, settings.topic_activity, "user_activity", 3000),
    }
    for name, view in VIEWS.items():
        frame = frames[view.contract]
        truth = ground_truth.VIEWS[name](ground_truth.clean_events(frame[frame["ts"].dt.date == day]))
        assert_same(store_rows(engine, store.BATCH_TABLES[name]), truth, list(view.keys))
    horizon = datetime.combine(day + timedelta(days=1), datetime.min.time())
    assert all(merge.horizon(engine, name) == horizon for name in VIEWS)
    with engine.connect() as connection:
        runs = connection.execute(select(store.quality_runs)).mappings().all()
    suites = {"raw_iot_sensors", "raw_user_activity", *(f"view_{name}" for name in VIEWS), "reconcile"}
    assert sorted(run["suite"] for run in runs) == sorted(suites) and all(run["success"] for run in runs)
    published = dump(engine)
    assert_exported(settings, airflow_env, day)

    # 5 % impossible temperatures written straight into day D's lake: the raw gate stops the run
    import pyarrow as pa

    from expectations.gates import data_docs_dir, read_raw_day
    from lambdaflow.lake import RAW_SCHEMAS, day_dir, raw_dir, write_parquet_atomically

    raw = read_raw_day(settings, "iot_sensors", day).to_pandas().drop_duplicates("event_id")
    corrupt = raw.sample(frac=0.05, random_state=1)
    corrupt["event_id"] = [f"00000000-0000-4000-8000-{n:012d}" for n in range(len(corrupt))]
    corrupt["temperature"] = -273.0
    table = pa.Table.from_pandas(corrupt, schema=RAW_SCHEMAS["iot_sensors"], preserve_index=False)
    lake_day = day_dir(raw_dir(settings.lake_dir, settings.topic_iot), day)
    write_parquet_atomically(table, lake_day / "part-x.parquet")
    result = airflow(["dags", "test", "lambdaflow_batch", day.isoformat()], airflow_env, check=False)
    output = result.stdout + result.stderr
    assert "expect_column_values_to_be_between(temperature)" in output

    after = dump(engine)
    after.pop("quality_runs"), published.pop("quality_runs")
    assert after == published, "a failed gate changed the published rows, the horizon or the speed tables"
    with engine.connect() as connection:
        runs = store.quality_runs
        raw_gate = connection.execute(select(runs).where(runs.c.suite == "raw_iot_sensors")).mappings().one()
    assert not raw_gate["success"]
    page = (data_docs_dir(settings) / raw_gate["link"]).read_text()
    assert "temperature" in page and "-273" in page


def assert_exported(settings, airflow_env, day) -> None:
    """The container holds the day's lake files, its views and Data Docs with their MD5s, and the manifest."""
    import base64
    import hashlib

    from azure.storage.blob import BlobServiceClient

    from batch.lake_backup import manifest_name

    extra = __import__("json").loads(airflow_env[f"AIRFLOW_CONN_{settings.azure_conn_id.upper()}"])["extra"]
    container = BlobServiceClient.from_connection_string(extra["connection_string"]).get_container_client(
        airflow_env["LAMBDAFLOW_AZURE_CONTAINER"]
    )
    blobs = {blob.name: blob for blob in container.list_blobs()}
    data_dir = settings.data_dir.resolve()
    local = [
        path
        for path in (
            *data_dir.glob(f"lake/*/*/date={day}/*"),
            *(data_dir / "quality" / "data_docs").rglob("*"),
        )
        if path.is_file() and not path.name.startswith((".", "_"))
    ]
    assert any("/raw/" in str(p) for p in local) and any("/views/" in str(p) for p in local)
    assert set(blobs) == {*(p.relative_to(data_dir).as_posix() for p in local), manifest_name(day)}
    for path in local:
        blob = blobs[path.relative_to(data_dir).as_posix()]
        md5 = base64.b64encode(hashlib.md5(path.read_bytes(), usedforsecurity=False).digest())
        assert (blob.size, base64.b64encode(blob.content_settings.content_md5)) == (path.stat().st_size, md5)
