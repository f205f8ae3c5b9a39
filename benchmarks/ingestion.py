"""Ingestion benchmarks: one producer process's throughput; the archiver's sustained rate into the lake."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from benchmarks.common import PeakMemory, Result, lambdaflow, peak_rss_mib, run_with_broker
from lambdaflow.broker import EmbeddedBroker

RUNS = 3
PRODUCER_RECORDS = 300_000
ARCHIVE_RECORDS_PER_TOPIC = 500_000
SENT = re.compile(r"sent ([\d,]+) records in ([\d.]+) s \(([\d,]+)/s\)")
BATCH = re.compile(r"archiver batch (\d+): (\d+) records .* in ([\d.]+) s")


def _env(broker: EmbeddedBroker, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAFLOW_")}
    env.update(LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, LAMBDAFLOW_DATA_DIR=str(data_dir))
    env.update(extra)
    return env


def _produce(env: dict[str, str], kind: str, count: int, topic: str | None = None) -> float:
    args = ["produce", kind, "--rate", "0", "--count", str(count)] + (["--topic", topic] if topic else [])
    process = lambdaflow(args, env)
    _, stderr = process.communicate()
    found = SENT.search(stderr)
    if process.returncode or not found:
        raise RuntimeError(f"producer failed: {stderr[-2000:]}")
    return float(found.group(3).replace(",", ""))


def producer_throughput(broker: EmbeddedBroker, work: Path) -> list[Result]:
    env = _env(broker, work / "producer")
    subprocess_topics(env)
    results = []
    for kind in ("iot", "activity"):
        runs = [_produce(env, kind, PRODUCER_RECORDS) for _ in range(RUNS)]
        result = Result(f"producer: {kind}, one process", "events/s", runs, "≥ 30,000")
        result.meets_target = result.median >= 30_000
        result.notes["records per run"] = f"{PRODUCER_RECORDS:,}"
        results.append(result)
    return results


def subprocess_topics(env: dict[str, str]) -> None:
    process = lambdaflow(["topics"], env)
    _, stderr = process.communicate()
    if process.returncode:
        raise RuntimeError(stderr)


def archiver_throughput(broker: EmbeddedBroker, work: Path) -> list[Result]:
    """Load the topics, then archive them from the start several times; the rate excludes Spark start-up."""
    topics = {
        "LAMBDAFLOW_TOPIC_IOT": "bench_archive_iot",
        "LAMBDAFLOW_TOPIC_ACTIVITY": "bench_archive_activity",
    }
    env = _env(broker, work / "archive-load", **topics)
    subprocess_topics(env)
    for kind in ("iot", "activity"):
        _produce(env, kind, ARCHIVE_RECORDS_PER_TOPIC)
    rates, spark_peaks = [], []
    for run in range(RUNS):
        data_dir = work / f"archive-{run}"
        env = _env(broker, data_dir, LAMBDAFLOW_MAX_RECORDS_PER_TRIGGER="200000", **topics)
        process = lambdaflow(["archive", "--once"], env)
        with PeakMemory(process.pid) as memory:
            _, stderr = process.communicate()
        if process.returncode:
            raise RuntimeError(f"archiver failed: {stderr[-3000:]}")
        batches = [(int(n), int(rows), float(seconds)) for n, rows, seconds in BATCH.findall(stderr)]
        steady = [b for b in batches if b[0] > 0] or batches  # batch 0 includes Python worker start-up
        rates.append(sum(b[1] for b in steady) / sum(b[2] for b in steady))
        spark_peaks.append(memory.peak_mib)
        archived = sum(b[1] for b in batches)
        if archived != 2 * ARCHIVE_RECORDS_PER_TOPIC:
            raise RuntimeError(
                f"the archiver read {archived:,} records, expected {2 * ARCHIVE_RECORDS_PER_TOPIC:,}"
            )
        shutil.rmtree(data_dir, ignore_errors=True)
    result = Result("archiver: topics -> lake (steady batches)", "events/s", rates, "≥ 25,000")
    result.meets_target = result.median >= 25_000
    broker_peak = peak_rss_mib(broker.process.pid) if broker.process else 0.0
    result.notes.update(
        {
            "records per run": f"{2 * ARCHIVE_RECORDS_PER_TOPIC:,} (2 topics x 4 partitions, 200k a trigger)",
            "archiver peak memory (driver + JVM + workers)": f"{max(spark_peaks):,.0f} MiB",
            "broker peak memory (Tansu, in-memory storage of every record so far)": f"{broker_peak:,.0f} MiB",
        }
    )
    return [result]


def run(selected: set[str]) -> list[Result]:
    return run_with_broker(selected, {"producer": producer_throughput, "archiver": archiver_throughput})
