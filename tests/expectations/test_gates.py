"""The Great Expectations gates over a lake built by the real archiver: a clean day passes every gate; a day
with 5 % impossible temperatures written straight into the lake fails the raw gate, is recorded as failed,
and its Data Docs page names the failing expectation; late events archived while a day's run goes on are
left to its next run, so the view gate counts what the recompute read."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import select

from batch.recompute import recompute_day
from expectations.gates import (
    QualityGateFailed,
    data_docs_dir,
    raw_day_frame,
    read_raw_day,
    reconcile_day,
    validate_raw_day,
    validate_view_day,
)
from ingestion.archiver import start_archiver
from lambdaflow import store
from lambdaflow.lake import (
    RAW_SCHEMAS,
    VALIDATED,
    day_dir,
    raw_dir,
    read_day_inputs,
    read_view_day,
    walk_files,
    write_parquet_atomically,
)
from tests.conftest import run_cli, settings_env

pytestmark = pytest.mark.integration


def quality_rows(settings) -> dict[str, dict]:
    with store.engine(settings.resolved_store_url).connect() as connection:
        rows = connection.execute(select(store.quality_runs)).mappings().all()
    return {row["suite"]: dict(row) for row in rows}


def test_gates_pass_a_clean_day_and_stop_a_corrupt_one(spark, settings):
    env = settings_env(settings)
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", "2000", "--rate", "0", "--duplicates", "0.05",
                 "--malformed", "0.03"], env)  # fmt: skip
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()
    day = datetime.now(UTC).date()
    readings = raw_day_frame(settings, "iot_sensors", day)
    if readings.empty:  # produced just before midnight: the events are dated yesterday
        day = readings["ts"].min().date()

    results = validate_raw_day(settings, day)
    recompute_day(spark, settings, day)
    results += validate_view_day(settings, day)
    results.append(reconcile_day(settings, day))
    assert all(result.success for result in results)
    recorded = quality_rows(settings)
    assert set(recorded) == {"raw_iot_sensors", "raw_user_activity", "reconcile"} | {
        f"view_{name}"
        for name in ("sensor_stats", "location_stats", "device_health", "activity_stats", "sessions")
    }
    assert all(row["success"] for row in recorded.values())
    assert (data_docs_dir(settings) / recorded["raw_iot_sensors"]["link"]).is_file()

    raw = read_raw_day(settings, "iot_sensors", day).to_pandas()  # with the Kafka coordinates
    corrupt = raw.drop_duplicates("event_id").sample(frac=0.05, random_state=3).copy()
    corrupt["event_id"] = [str(uuid.uuid4()) for _ in range(len(corrupt))]
    corrupt["temperature"] = 999.0
    path = day_dir(raw_dir(settings.lake_dir, settings.topic_iot), day) / "part-corrupt.parquet"
    write_parquet_atomically(pa.Table.from_pandas(corrupt, schema=RAW_SCHEMAS["iot_sensors"],
                                                  preserve_index=False), path)  # fmt: skip
    with pytest.raises(QualityGateFailed, match=r"expect_column_values_to_be_between\(temperature\)"):
        validate_raw_day(settings, day)
    row = quality_rows(settings)["raw_iot_sensors"]
    assert not row["success"]
    failed = json.loads(row["failed"])
    assert [f["kwargs"]["column"] for f in failed] == ["temperature"]
    assert failed[0]["unexpected_count"] == len(corrupt)
    page = (data_docs_dir(settings) / row["link"]).read_text()
    assert "temperature" in page and "999" in page, "the Data Docs page does not show the failing values"


def archived_day(spark, settings, count: int) -> date:
    env = settings_env(settings)
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", str(count), "--rate", "0", "--duplicates", "0.05"], env)
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()
    readings = raw_day_frame(settings, "iot_sensors", datetime.now(UTC).date())
    # produced just before midnight: the events are dated yesterday
    return datetime.now(UTC).date() if not readings.empty else (datetime.now(UTC) - timedelta(days=1)).date()


def sensor_events(settings, day) -> int:
    return read_view_day(settings.lake_dir, "sensor_stats", day).column("events").to_pandas().sum()


def distinct_ids(paths) -> int:
    """The ground truth: distinct `event_id`s over the given Parquet files, in pandas."""
    return pd.concat([pd.read_parquet(path, columns=["event_id"]) for path in paths])["event_id"].nunique()


def test_late_events_archived_during_a_run_wait_for_the_next_run(spark, settings):
    day = archived_day(spark, settings, 1500)
    folder = day_dir(raw_dir(settings.lake_dir, settings.topic_iot), day)
    validate_raw_day(settings, day)
    validated = list(walk_files(folder))
    inputs = read_day_inputs(settings.lake_dir, day, VALIDATED)
    assert inputs is not None and inputs.paths(settings.lake_dir, settings.topic_iot) == validated

    # late events of day D land in the lake between the raw gate and the recompute
    raw = read_raw_day(settings, "iot_sensors", day).to_pandas().drop_duplicates("event_id")
    late = raw.sample(n=40, random_state=5).copy()
    late["event_id"] = [str(uuid.uuid4()) for _ in range(len(late))]
    table = pa.Table.from_pandas(late, schema=RAW_SCHEMAS["iot_sensors"], preserve_index=False)
    write_parquet_atomically(table, folder / "part-late.parquet")

    recompute_day(spark, settings, day, inputs)
    assert all(result.success for result in validate_view_day(settings, day))
    assert sensor_events(settings, day) == distinct_ids(validated) > 0

    # the day's next run (a backfill) takes them
    validate_raw_day(settings, day)
    recompute_day(spark, settings, day, read_day_inputs(settings.lake_dir, day, VALIDATED))
    assert all(result.success for result in validate_view_day(settings, day))
    every_file = list(walk_files(folder))
    assert sensor_events(settings, day) == distinct_ids(every_file) == distinct_ids(validated) + len(late)

    # a recorded file that is gone is one clear error, not a silently smaller day
    (folder / "part-late.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 raw files of .* are not in .*part-late\.parquet"):
        recompute_day(spark, settings, day, read_day_inputs(settings.lake_dir, day, VALIDATED))
