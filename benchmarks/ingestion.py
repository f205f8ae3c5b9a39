"""Ingestion benchmarks: one producer process's throughput; the archiver's sustained rate into the lake; the
embedded broker's produce and consume throughput with durable storage beside memory storage."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import RESULTS, PeakMemory, Result, lambdaflow, peak_rss_mib, run_with_broker
from benchmarks.floors import consume_plainly, produce_all, produce_plainly
from lambdaflow.broker import EmbeddedBroker, free_port
from lambdaflow.kafka import KafkaConnection
from lambdaflow.settings import Settings

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PRODUCER_RECORDS = 300_000
ARCHIVE_RECORDS_PER_TOPIC = 500_000
BROKER_RECORDS = 100_000
BROKER_RECORD_BYTES = 300
BROKER_LATENCY_SAMPLES = 200
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
        topic = Settings().topic_iot if kind == "iot" else Settings().topic_activity
        result = Result(f"producer: {kind}, one process", "events/s", [], "≥ 30,000")
        for _ in range(RUNS):  # alternated, so that both see the same hour
            result.runs.append(_produce(env, kind, PRODUCER_RECORDS))
            result.floor_runs.append(produce_plainly(broker.bootstrap_servers, topic, kind, PRODUCER_RECORDS))
        result.meets_target = result.median >= 30_000
        result.notes["records per run"] = f"{PRODUCER_RECORDS:,}"
        result.notes["floor"] = "librdkafka producing the same simulator's records (acks=1)"
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
    rates, spark_peaks, floor_rates = [], [], []
    contracts = {topics["LAMBDAFLOW_TOPIC_IOT"]: "iot_sensors",
                 topics["LAMBDAFLOW_TOPIC_ACTIVITY"]: "user_activity"}  # fmt: skip
    for run in range(RUNS):
        floor_lake = work / f"archive-floor-{run}"
        floor_rates.append(
            consume_plainly(broker.bootstrap_servers, contracts, 2 * ARCHIVE_RECORDS_PER_TOPIC, floor_lake)
        )
        shutil.rmtree(floor_lake, ignore_errors=True)
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
    result = Result("archiver: topics -> lake (steady batches)", "events/s", rates, "≥ 25,000",
                    floor_runs=floor_rates)  # fmt: skip
    result.meets_target = result.median >= 25_000
    broker_peak = peak_rss_mib(broker.process.pid) if broker.process else 0.0
    result.notes.update(
        {
            "records per run": f"{2 * ARCHIVE_RECORDS_PER_TOPIC:,} (2 topics x 4 partitions, 200k a trigger)",
            "archiver peak memory (driver + JVM + workers)": f"{max(spark_peaks):,.0f} MiB",
            "broker peak memory (Tansu, in-memory storage of every record so far)": f"{broker_peak:,.0f} MiB",
            "floor": "one librdkafka consumer, the same validation, Parquet per topic and day with pyarrow",
        }
    )
    return [result]


def broker_storage(_: EmbeddedBroker, work: Path) -> list[Result]:
    """Produce then consume `BROKER_RECORDS` records of `BROKER_RECORD_BYTES` over 4 partitions with
    librdkafka (so that the client is not the bound), on a fresh broker of each storage per run; plus one
    record at a time (send, wait for its acknowledgement) and, for durable storage, a restart over the
    data."""
    rates: dict[tuple[str, str], list[float]] = {}
    latencies: dict[str, list[float]] = {"memory": [], "durable": []}
    restarts, stored_mib, peaks = [], [], {}
    logs = RESULTS / "logs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for run in range(RUNS):
        for storage in ("memory", "durable"):
            directory = work / f"broker-{run}"
            log = logs / f"broker-{storage}-{run + 1}.log"
            where = "memory" if storage == "memory" else directory
            with EmbeddedBroker("127.0.0.1", free_port(), log_path=log, storage=where) as broker:
                connection = KafkaConnection(broker.bootstrap_servers)
                _create_bench_topic(connection)
                rates.setdefault(("produce", storage), []).append(_produce_rate(connection))
                rates.setdefault(("consume", storage), []).append(_consume_rate(connection))
                latencies[storage] += _one_at_a_time_ms(connection)
                processes = [broker.process, *([broker.object_store.process] if broker.object_store else [])]
                peaks.setdefault(storage, []).append(sum(peak_rss_mib(p.pid) for p in processes if p))
            if storage == "durable":
                stored_mib.append(sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20)
                started = time.monotonic()
                with EmbeddedBroker("127.0.0.1", free_port(), storage=directory):
                    restarts.append(time.monotonic() - started)
                shutil.rmtree(directory, ignore_errors=True)
    results = []
    for (direction, storage), runs in rates.items():
        result = Result(f"broker: {direction}, {storage} storage", "records/s", runs)
        result.notes["records per run"] = f"{BROKER_RECORDS:,} x {BROKER_RECORD_BYTES} B, 4 partitions"
        if storage == "durable":
            memory = statistics.median(rates[direction, "memory"])
            result.notes["durable / memory"] = f"{result.median / memory:.2f}"
        if direction == "consume":
            results.append(result)
            continue
        samples = sorted(latencies[storage])
        p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * 0.99)]
        result.notes["one record at a time, send to acknowledgement"] = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        what = "Tansu + SeaweedFS" if storage == "durable" else "Tansu"
        result.notes[f"peak memory ({what})"] = f"{max(peaks[storage]):,.0f} MiB"
        if storage == "durable":
            result.notes["restart over the data, until Kafka answers"] = (
                f"{statistics.median(restarts):.1f} s (object store, then Tansu)"
            )
            result.notes["storage on disk after a run"] = f"{statistics.median(stored_mib):,.0f} MiB"
        results.append(result)
    return results


def _create_bench_topic(connection: KafkaConnection) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(**connection.kafka_python())
    try:
        admin.create_topics([NewTopic("bench_broker", 4, 1)])
    finally:
        admin.close()


def _produce_rate(connection: KafkaConnection) -> float:
    from confluent_kafka import Producer

    producer = Producer({**connection.rdkafka(), "linger.ms": 5, "acks": "all"})
    value = b"x" * BROKER_RECORD_BYTES
    started = time.monotonic()
    produce_all(producer, "bench_broker", ((str(n % 1000).encode(), value) for n in range(BROKER_RECORDS)))
    return BROKER_RECORDS / (time.monotonic() - started)


def _consume_rate(connection: KafkaConnection) -> float:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**connection.rdkafka(), "group.id": "bench", "fetch.wait.max.ms": 50,
                         "enable.auto.commit": False, "fetch.max.bytes": 64 * 2**20})  # fmt: skip
    consumer.assign([TopicPartition("bench_broker", p, OFFSET_BEGINNING) for p in range(4)])
    read, started = 0, time.monotonic()
    deadline = started + 120
    try:
        while read < BROKER_RECORDS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {read:,} of {BROKER_RECORDS:,} records in 120 s")
            read += sum(1 for m in consumer.consume(num_messages=50_000, timeout=0.5) if m.error() is None)
        return read / (time.monotonic() - started)
    finally:
        consumer.close()


def _one_at_a_time_ms(connection: KafkaConnection) -> list[float]:
    from confluent_kafka import Producer

    producer = Producer({**connection.rdkafka(), "linger.ms": 0, "acks": "all"})
    value, samples = b"x" * BROKER_RECORD_BYTES, []
    for number in range(BROKER_LATENCY_SAMPLES):
        started = time.monotonic()
        producer.produce("bench_broker", value, key=str(number).encode())
        producer.flush(10)
        samples.append((time.monotonic() - started) * 1000)
    return samples


def run(selected: set[str]) -> list[Result]:
    return run_with_broker(
        selected,
        {"producer": producer_throughput, "archiver": archiver_throughput, "broker": broker_storage},
    )
