"""The progress recorder's offsets, lag and stall clock from Spark's listener events (built from their JSON,
so no JVM): the broker's end offsets come from its probe, a query whose offsets do not move keeps its progress
time while it has lag, an idle one reports with no lag, and alerts and counts carry across a restart."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
)
from sqlalchemy import select

from lambdaflow import store
from lambdaflow.metrics import progress_metrics
from speed.progress import ProgressRecorder, count_stored_alerts

QUERY_ID, RUN_ID = str(uuid.uuid4()), str(uuid.uuid4())
STAMP = "2026-12-03T10:00:00.000Z"


def progress(batch_id: int, processed: dict[str, int], rows: int = 0, dropped: int = 0) -> QueryProgressEvent:
    """A progress event as Spark's JSON has it; our source reports no latestOffset, and its offsets hold
    non-position entries too."""
    source = {
        "description": "lambdaflow_kafka", "startOffset": None, "latestOffset": None, "numInputRows": rows,
        "endOffset": {**processed, "topic_ids": {"iot": "abc"}}, "inputRowsPerSecond": 40.0,
        "processedRowsPerSecond": 80.0,
    }  # fmt: skip
    state = {
        "operatorName": "dedupe", "numRowsTotal": 0, "numRowsUpdated": 0, "numRowsRemoved": 0,
        "allUpdatesTimeMs": 0, "allRemovalsTimeMs": 0, "commitTimeMs": 0, "memoryUsedBytes": 0,
        "numRowsDroppedByWatermark": dropped, "numShufflePartitions": 1, "numStateStoreInstances": 1,
    }  # fmt: skip
    return QueryProgressEvent.fromJson({"progress": {
        "id": QUERY_ID, "runId": RUN_ID, "name": "speed_iot_sensors", "timestamp": STAMP, "batchId": batch_id,
        "batchDuration": 250, "durationMs": {"triggerExecution": 250}, "numInputRows": rows,
        "inputRowsPerSecond": 40.0, "processedRowsPerSecond": 80.0,
        "eventTime": {"max": STAMP, "watermark": STAMP}, "stateOperators": [state], "sources": [source],
        "sink": {"description": "foreachBatch", "numOutputRows": -1},
    }})  # fmt: skip


class Broker:
    """The broker's end offsets, as the recorder's probe sees them."""

    def __init__(self, ends: dict[str, int]) -> None:
        self.ends = ends
        self.asked: list[list[str]] = []

    def __call__(self, keys: list[str]) -> dict[str, int]:
        self.asked.append(keys)
        return {key: self.ends[key] for key in keys}


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'serving.db'}"


def stored(url: str) -> dict:
    with store.engine(url).connect() as connection:
        return dict(connection.execute(select(store.stream_progress)).mappings().one())


def test_lag_from_the_probe_and_a_stall_clock_that_runs_only_while_offsets_do_not_move(url):
    broker = Broker({"iot:0": 10, "iot:1": 4})
    recorder = ProgressRecorder(url, broker)
    recorder.onQueryStarted(QueryStartedEvent.fromJson(
        {"id": QUERY_ID, "runId": RUN_ID, "name": "speed_iot_sensors", "timestamp": STAMP}))  # fmt: skip
    recorder.onQueryProgress(progress(0, {"iot:0": 6, "iot:1": 4}, rows=10))
    row = stored(url)
    assert json.loads(row["processed_offsets"]) == {"iot:0": 6, "iot:1": 4}
    assert row["lag_records"] == 0  # nothing probed yet: no more than processed is known
    assert row["input_rows_per_second"] == 40.0 and row["batch_duration_ms"] == 250

    recorder.probe()  # the broker has 4 more on partition 0
    assert broker.asked == [["iot:0", "iot:1"]]
    row = stored(url)
    assert json.loads(row["end_offsets"]) == {"iot:0": 10, "iot:1": 4} and row["lag_records"] == 4
    started = row["progressed_at"]

    recorder.onQueryProgress(progress(1, {"iot:0": 6, "iot:1": 4}))  # a batch that moved nothing
    recorder.probe()
    row = stored(url)
    assert row["lag_records"] == 4 and row["progressed_at"] == started and row["updated_at"] > started

    recorder.onQueryProgress(progress(2, {"iot:0": 8, "iot:1": 4}, rows=2))  # moved, still behind
    row = stored(url)
    assert row["lag_records"] == 2 and row["progressed_at"] > started

    broker.ends["iot:0"] = 8
    recorder.probe()  # caught up: an idle query's progress time keeps up with its reports
    row = stored(url)
    assert row["lag_records"] == 0 and row["progressed_at"] == row["updated_at"]

    recorder.onQueryTerminated(QueryTerminatedEvent.fromJson(
        {"id": QUERY_ID, "runId": RUN_ID, "exception": None, "errorClassOnException": None}))  # fmt: skip
    broker.asked.clear()
    recorder.probe()  # a stopped query is not reported on: /health then calls it down
    assert broker.asked == [] and stored(url)["updated_at"] == row["updated_at"]


def test_an_idle_query_reports_with_no_rates_and_the_counts_carry_across_a_restart(url):
    recorder = ProgressRecorder(url)
    recorder.onQueryStarted(QueryStartedEvent.fromJson(
        {"id": QUERY_ID, "runId": RUN_ID, "name": "speed_iot_sensors", "timestamp": STAMP}))  # fmt: skip
    count_stored_alerts("speed_iot_sensors", [{"rule": "battery_low"}] * 2 + [{"rule": "temperature_high"}])
    recorder.onQueryProgress(progress(0, {"iot:0": 6}, rows=6, dropped=1))
    recorder.onQueryProgress(progress(0, {"iot:0": 6}, rows=6, dropped=1))  # the same report again
    before = stored(url)
    assert before["late_rows"] == 1 and json.loads(before["alerts_fired"]) == {
        "battery_low": 2, "temperature_high": 1}  # fmt: skip

    recorder.onQueryIdle(QueryIdleEvent.fromJson({"id": QUERY_ID, "runId": RUN_ID, "timestamp": STAMP}))
    idle = stored(url)
    assert idle["updated_at"] > before["updated_at"] and idle["lag_records"] == 0
    assert idle["input_rows_per_second"] == 0.0 and idle["batch_id"] == 0

    restarted = ProgressRecorder(url)  # a new process: counts go on from the store
    count_stored_alerts("speed_iot_sensors", [{"rule": "battery_low"}])
    restarted.onQueryProgress(progress(1, {"iot:0": 9}, rows=3, dropped=2))
    row = stored(url)
    assert row["late_rows"] == 3 and json.loads(row["alerts_fired"]) == {
        "battery_low": 3,
        "temperature_high": 1,
    }

    families = {family.name: family for family in progress_metrics(restarted.snapshot())}
    assert [sample.value for sample in families["lambdaflow_stream_late_rows"].samples] == [3]
    offsets = families["lambdaflow_stream_processed_offset"].samples
    assert [(s.labels, s.value) for s in offsets] == [
        ({"query": "speed_iot_sensors", "topic": "iot", "partition": "0"}, 9)]  # fmt: skip
    reported = families["lambdaflow_stream_last_report_timestamp_seconds"].samples[0].value
    assert datetime.now(UTC).timestamp() - reported < 60
