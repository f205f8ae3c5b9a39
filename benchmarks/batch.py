"""Batch benchmarks: recompute a 10-million-event day with Spark, in local mode and on a standalone cluster
(one worker, 2 cores, started with docker-compose.yaml's commands), the same views with DuckDB over the same
Parquet files, and the validation of that day (raw and view gates).

The day is written straight into the lake (no broker: the benchmark measures the batch layer): 5 M IoT
readings and 5 M user-activity events with the archiver's schema, 1 % duplicated, spread over one UTC day.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from contextlib import nullcontext
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import PeakMemory, Result, lambdaflow
from lambdaflow.lake import RAW_SCHEMAS, day_dir, raw_dir, write_parquet_atomically
from local_services.spark_cluster import running_spark_cluster

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
EVENTS_PER_TOPIC = int(os.environ.get("BENCH_BATCH_EVENTS_PER_TOPIC", "5000000"))
CLUSTER = os.environ.get("BENCH_BATCH_CLUSTER", "1") != "0"  # 0: local mode only
DAY = date(2026, 11, 1)
FILES_PER_TOPIC = 8
TOPICS = {"iot_sensors": "bench_iot", "user_activity": "bench_activity"}


def _uuids(rng: np.random.Generator, n: int) -> pa.Array:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return pa.array([str(uuid.UUID(bytes=row.tobytes())) for row in raw])


def _common(rng: np.random.Generator, n: int, topic: str, part: int, offset0: int) -> dict[str, pa.Array]:
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    ts_us = np.sort(rng.integers(0, 86_400_000_000, size=n)) + int(start.timestamp() * 1e6)
    delay_us = rng.exponential(2_000_000, size=n).astype(np.int64)
    late = rng.random(n) < 0.01
    delay_us[late] += 900_000_000  # 1 % reach Kafka 15 minutes late
    as_ts = pa.timestamp("us", tz="UTC")
    return {
        "ts": pa.array(ts_us, as_ts),
        "_topic": pa.array([topic] * n),
        "_partition": pa.array(np.full(n, part, dtype=np.int32)),
        "_offset": pa.array(np.arange(offset0, offset0 + n, dtype=np.int64)),
        "_kafka_ts": pa.array(ts_us + delay_us, as_ts),
        "_ingested_at": pa.array(ts_us + delay_us + 500_000, as_ts),
    }


def _with_duplicates(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    picks = rng.choice(table.num_rows, size=table.num_rows // 100, replace=False)
    copies = table.take(pa.array(np.sort(picks)))
    offsets = pa.array(np.arange(table.num_rows, table.num_rows + copies.num_rows, dtype=np.int64))
    copies = copies.set_column(copies.schema.get_field_index("_offset"), "_offset", offsets)
    return pa.concat_tables([table, copies])


def write_day(lake: Path) -> int:
    """Write the benchmark day into `lake`; returns the number of rows written (duplicates included)."""
    rng = np.random.default_rng(7)
    locations = np.array(["berlin", "madrid", "oslo", "lagos", "lima", "tokyo", "perth", "quito"])
    written = 0
    per_file = EVENTS_PER_TOPIC // FILES_PER_TOPIC
    for part in range(FILES_PER_TOPIC):
        n = per_file
        sensors = rng.integers(0, 500, size=n)
        iot = {
            "event_id": _uuids(rng, n),
            "sensor_id": pa.array([f"sensor-{s:04d}" for s in sensors]),
            "location": pa.array(locations[sensors % len(locations)]),
            "temperature": pa.array(np.round(rng.normal(21, 6, n).clip(-50, 100), 2)),
            "humidity": pa.array(np.round(rng.uniform(20, 90, n), 2)),
            "pressure": pa.array(np.round(rng.normal(1013, 8, n), 2)),
            "battery": pa.array(np.round(rng.uniform(5, 100, n), 2)),
            **_common(rng, n, TOPICS["iot_sensors"], part, 0),
        }
        sessions = rng.integers(0, n // 12, size=n) + part * n
        kinds = rng.choice(["login", "page_view", "add_to_cart", "purchase", "logout"], size=n,
                           p=[0.1, 0.6, 0.15, 0.05, 0.1])  # fmt: skip
        amount = np.where(kinds == "purchase", np.round(rng.uniform(5, 300, n), 2), np.nan)
        activity = {
            "event_id": _uuids(rng, n),
            "user_id": pa.array([f"user-{s % 200_000:06d}" for s in sessions]),
            "session_id": pa.array([f"session-{s:09d}" for s in sessions]),
            "event_type": pa.array(kinds),
            "page": pa.array(rng.choice(["/", "/cart", "/product", "/search"], size=n)),
            "browser": pa.array(rng.choice(["chrome", "firefox", "safari", "edge"], size=n)),
            "amount": pa.array(amount, from_pandas=True),
            **_common(rng, n, TOPICS["user_activity"], part, 0),
        }
        for contract, columns in (("iot_sensors", iot), ("user_activity", activity)):
            schema = RAW_SCHEMAS[contract]
            table = pa.table({field.name: columns[field.name] for field in schema}).cast(schema)
            table = _with_duplicates(table, rng)
            path = day_dir(raw_dir(lake, TOPICS[contract]), DAY) / f"part-{part:010d}-0000.parquet"
            write_parquet_atomically(table, path)
            written += table.num_rows
    return written


DUCKDB_VIEWS = """
CREATE OR REPLACE TEMP VIEW iot AS
  SELECT * EXCLUDE (copy), lower(trim(location)) AS location_clean FROM (
    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY _topic, _partition, _offset) AS copy
    FROM read_parquet('{iot}')) WHERE copy = 1;
CREATE OR REPLACE TEMP VIEW activity AS
  SELECT * EXCLUDE (copy), lower(trim(browser)) AS browser_clean FROM (
    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY _topic, _partition, _offset) AS copy
    FROM read_parquet('{activity}')) WHERE copy = 1;
"""
DUCKDB_QUERIES = {
    "sensor_stats": """SELECT time_bucket(INTERVAL '{w} seconds', ts) AS window_start, sensor_id,
        location_clean, count(*), avg(temperature), min(temperature), max(temperature), avg(humidity),
        avg(pressure), min(battery) FROM iot GROUP BY ALL""",
    "location_stats": """SELECT time_bucket(INTERVAL '{w} seconds', ts), location_clean, count(*),
        count(DISTINCT sensor_id), avg(temperature), max(temperature) FROM iot GROUP BY ALL""",
    "activity_stats": """SELECT time_bucket(INTERVAL '{w} seconds', ts), event_type, browser_clean, count(*),
        count(DISTINCT user_id), coalesce(sum(amount), 0) FROM activity GROUP BY ALL""",
    "sessions": """SELECT session_id, user_id, min(ts), max(ts), count(*),
        sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END), coalesce(sum(amount), 0) FROM (
          SELECT *, sum(new) OVER (PARTITION BY session_id ORDER BY ts) AS burst FROM (
            SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY session_id ORDER BY ts)
                      >= INTERVAL '{gap} seconds' THEN 1 ELSE 0 END AS new FROM activity))
        GROUP BY session_id, user_id, burst""",
}


def duckdb_seconds(lake: Path, threads: int = 2) -> float:
    import duckdb

    connection = duckdb.connect()
    connection.execute(f"SET threads = {threads}")
    started = time.monotonic()
    connection.execute(DUCKDB_VIEWS.format(
        iot=day_dir(raw_dir(lake, TOPICS["iot_sensors"]), DAY) / "*.parquet",
        activity=day_dir(raw_dir(lake, TOPICS["user_activity"]), DAY) / "*.parquet",
    ))  # fmt: skip
    for name, query in DUCKDB_QUERIES.items():
        connection.execute(f"CREATE TEMP TABLE out_{name} AS " + query.format(w=300, gap=1800))
    elapsed = time.monotonic() - started
    connection.close()
    return elapsed


def run(selected: set[str]) -> list[Result]:
    del selected  # one group
    with tempfile.TemporaryDirectory(prefix="lambdaflow-bench-batch-") as temporary:
        data_dir = Path(temporary)
        print(f"  writing a {2 * EVENTS_PER_TOPIC:,}-event day into the lake …", flush=True)
        rows = write_day(data_dir / "lake")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAFLOW_")}
        env.update(LAMBDAFLOW_DATA_DIR=str(data_dir), LAMBDAFLOW_TOPIC_IOT=TOPICS["iot_sensors"],
                   LAMBDAFLOW_TOPIC_ACTIVITY=TOPICS["user_activity"])  # fmt: skip
        spark_runs, cluster_runs, duck_runs, validate_runs, peaks = [], [], [], [], []
        cluster = running_spark_cluster(data_dir / "spark-cluster") if CLUSTER else nullcontext(None)
        with cluster as spark_cluster:
            for run_number in range(RUNS):
                started = time.monotonic()
                process = lambdaflow(["batch", "--date", str(DAY)], env)
                with PeakMemory(process.pid) as memory:
                    _, stderr = process.communicate()
                if process.returncode:
                    raise RuntimeError(f"batch failed: {stderr[-3000:]}")
                spark_runs.append(time.monotonic() - started)
                peaks.append(memory.peak_mib)
                if spark_cluster:
                    cluster_runs.append(_cluster_batch_seconds(env, spark_cluster.url))
                duck_runs.append(duckdb_seconds(data_dir / "lake"))
                validate_runs.append(_validation_seconds(env))
                cluster_note = f", on the cluster {cluster_runs[-1]:.1f} s" if cluster_runs else ""
                print(f"  batch run {run_number + 1}: Spark {spark_runs[-1]:.1f} s{cluster_note}, DuckDB "
                      f"{duck_runs[-1]:.1f} s, validation {validate_runs[-1]:.1f} s", flush=True)  # fmt: skip
    recompute = Result("batch: recompute a 10M-event day (Spark)", "s", spark_runs, "≤ 90",
                       floor_runs=duck_runs)  # fmt: skip
    recompute.meets_target = recompute.median <= 90
    recompute.notes.update({
        "rows in the lake (1 % duplicates)": f"{rows:,}",
        "includes": "Spark start-up, 5 views + late events + baselines, atomic writes",
        "floor": "DuckDB computing the 4 views it has a query for, over the same Parquet files",
        "peak memory (driver JVM + Python)": f"{max(peaks):,.0f} MiB",
    })  # fmt: skip
    ratio = Result("batch: Spark / DuckDB (same views, same files)", "x",
                   [s / d for s, d in zip(spark_runs, duck_runs, strict=True)], "≤ 4")  # fmt: skip
    ratio.meets_target = ratio.median <= 4
    ratio.notes["DuckDB seconds (2 threads)"] = ", ".join(f"{d:.1f}" for d in duck_runs)
    validation = Result("batch: validate the day (raw + view gates)", "s", validate_runs, "≤ 60")
    validation.meets_target = validation.median <= 60
    if not cluster_runs:
        return [recompute, ratio, validation]
    ratios = [c / s for c, s in zip(cluster_runs, spark_runs, strict=True)]
    cluster_ratio = Result("batch: standalone cluster (1 worker, 2 cores) / local mode", "x", ratios, "≤ 1.2")
    cluster_ratio.meets_target = cluster_ratio.median <= 1.2
    cluster_ratio.notes["cluster seconds"] = ", ".join(f"{c:.1f}" for c in cluster_runs)
    cluster_ratio.notes["executor"] = f"2 cores, {EXECUTOR_MEMORY} (local mode's driver: 2g)"
    return [recompute, ratio, validation, cluster_ratio]


# the executor gets the heap local mode's driver has (LAMBDAFLOW_SPARK_DRIVER_MEMORY's default)
EXECUTOR_MEMORY = "2g"


def _cluster_batch_seconds(env: dict[str, str], master: str) -> float:
    """The same day's recompute submitted to the standalone cluster, as docker-compose.yaml's tasks do."""
    submit = f"--conf spark.executor.memory={EXECUTOR_MEMORY} pyspark-shell"
    cluster_env = {**env, "LAMBDAFLOW_SPARK_MASTER": master, "PYSPARK_SUBMIT_ARGS": submit}
    started = time.monotonic()
    process = lambdaflow(["batch", "--date", str(DAY)], cluster_env)
    _, stderr = process.communicate()
    if process.returncode:
        raise RuntimeError(f"batch on the cluster failed: {stderr[-3000:]}")
    return time.monotonic() - started


def _validation_seconds(env: dict[str, str]) -> float:
    import subprocess
    import sys

    code = ("from datetime import date; from lambdaflow.settings import load_settings; "
            "from expectations.gates import validate_raw_day, validate_view_day; s = load_settings(); "
            f"d = date.fromisoformat('{DAY}'); validate_raw_day(s, d); validate_view_day(s, d)")  # fmt: skip
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"validation failed: {result.stderr[-3000:]}")
    return time.monotonic() - started
