"""A backfill of three days through a running Airflow (scheduler, LocalExecutor, metadata on PostgreSQL)
publishes the three days equal to the ground truth; backfilling one of them again leaves the store as it
was."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from ingestion.archiver import start_archiver
from lambdaflow import store
from lambdaflow.views import VIEWS
from serving import merge
from tests import ground_truth
from tests.batch.test_recompute import assert_same, dump, store_rows, topic_events
from tests.conftest import run_cli, settings_env
from tests.dags.conftest import airflow

pytestmark = pytest.mark.integration
EVENTS = 6000  # over three days


def wait_for_backfills(metadata_url: str, expected: int, timeout_s: float = 900) -> list:
    """Wait until `expected` backfills exist and the scheduler completed them all; return the DAG runs."""
    engine = create_engine(metadata_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with engine.connect() as connection:
                backfills = connection.execute(text("SELECT completed_at FROM backfill")).scalars().all()
                runs = connection.execute(text(
                    "SELECT logical_date, state, run_type FROM dag_run WHERE dag_id = 'lambdaflow_batch' "
                    "ORDER BY logical_date")).all()  # fmt: skip
            if len(backfills) >= expected and all(backfills):
                return runs
            assert time.monotonic() < deadline, f"the backfills did not complete: {runs}"
            time.sleep(2)
    finally:
        engine.dispose()


@pytest.mark.timeout(1500)
def test_backfill_of_three_days_publishes_them_and_a_rerun_is_idempotent(spark, settings, airflow_services):
    backfill_days_then_one_again(spark, settings, airflow_services, count=3)


def backfill_days_then_one_again(spark, settings, airflow_services, count: int) -> None:
    """The test's steps over `count` days; test_backfill_on_cluster runs them with the DAG's Spark work on a
    cluster."""
    env, metadata_url = airflow_services
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in range(count + 1, 1, -1)]
    events = EVENTS * count // 3  # as many a day, whatever the count
    # events from the first day's 00:00 to about 05:00 after the last (--count includes duplicates and
    # malformed records, ~8 %): the lake is complete for the days
    span_s = timedelta(days=count, hours=12).total_seconds()
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", str(events), "--rate", f"{events / span_s:.6f}",
                 "--start", f"{days[0]}T00:00:00Z", "--seed", "13", "--duplicates", "0.05",
                 "--out-of-order", "0.1", "--malformed", "0.03"], settings_env(settings))  # fmt: skip
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()

    airflow(["dags", "unpause", "lambdaflow_batch"], env)
    airflow(["backfill", "create", "--dag-id", "lambdaflow_batch", "--from-date", str(days[0]),
             "--to-date", str(days[-1]), "--reprocess-behavior", "completed"], env)  # fmt: skip
    runs = wait_for_backfills(metadata_url, 1)
    assert [(r.logical_date.date(), r.state) for r in runs if r.run_type == "backfill"] == [
        (day, "success") for day in days
    ]

    engine = store.engine(settings.resolved_store_url)
    frames = {
        "iot_sensors": topic_events(settings, settings.topic_iot, "iot_sensors", events),
        "user_activity": topic_events(settings, settings.topic_activity, "user_activity", events),
    }
    for name, view in VIEWS.items():
        frame = frames[view.contract]
        truth = ground_truth.VIEWS[name](ground_truth.clean_events(frame[frame["ts"].dt.date.isin(days)]))
        # sessions are cut at midnight: the batch computes each day alone
        if name == "sessions":
            truth = ground_truth.concat_days(frame, days, ground_truth.sessions)
        assert_same(store_rows(engine, store.BATCH_TABLES[name]), truth, list(view.keys))
    assert merge.horizon(engine, "sensor_stats") == datetime.combine(days[-1] + timedelta(days=1),
                                                                        datetime.min.time())  # fmt: skip
    published = dump(engine)

    airflow(["backfill", "create", "--dag-id", "lambdaflow_batch", "--from-date", str(days[1]),
             "--to-date", str(days[1]), "--reprocess-behavior", "completed"], env)  # fmt: skip
    runs = wait_for_backfills(metadata_url, 2, timeout_s=600)
    # the day backfilled again ran its run again: still one run a day
    assert [r.state for r in runs if r.run_type == "backfill"] == ["success"] * count
    again = dump(engine)
    quality_before, quality_after = published.pop("quality_runs"), again.pop("quality_runs")
    assert again == published, "backfilling a published day again changed the store"
    suites = {"raw_iot_sensors", "raw_user_activity", *(f"view_{name}" for name in VIEWS), "reconcile"}
    assert len(quality_after) == len(quality_before) == len(days) * len(suites)
    assert {row[1] for row in quality_after} == suites
