"""Floors: the work of a benchmark done the plainest way, on the same records, in the same run.

On a shared machine an absolute figure moves with the hour; the ratio of a lambdaflow figure to its floor
moves much less, and says what the engine costs over a plain Kafka client doing the same work:
- producer: confluent-kafka (librdkafka) producing the records of the same simulator;
- archiver: a confluent-kafka consumer splitting the records with the same contract validation and writing
  the valid events as Parquet per topic and day with pyarrow;
- speed drain: the same consumer and validation, no writing;
- freshness: the same consumer on the IoT topic alone, folding each poll's readings into `sensor_stats`'s
  partial rows and merging them into the same store with the speed layer's own merge and upsert
  (`python -m benchmarks.floors freshness …` runs it as its own process, as the app is).
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from lambdaflow import store
from lambdaflow.kafka import KafkaConnection
from lambdaflow.records import RECORD_COLUMNS, split_records
from lambdaflow.settings import Settings

POLL_RECORDS = 20_000  # records a consume() call, about what a micro-batch of the freshness load holds
MAX_FUTURE = timedelta(seconds=Settings().max_future_seconds)


def produce_plainly(bootstrap_servers: str, topic: str, kind: str, count: int, seed: int = 1) -> float:
    """Events/s of librdkafka producing `count` records of the demo simulator (acks=1, as `produce`)."""
    from ingestion.faults import FaultInjector, Faults
    from ingestion.simulators import ActivitySimulator, IotSimulator, wall_clock

    simulator = IotSimulator(seed=seed) if kind == "iot" else ActivitySimulator(seed=seed, concurrency=50)
    records = FaultInjector(Faults(), seed).apply(simulator.events(wall_clock), simulator.key)
    producer = Producer({**KafkaConnection(bootstrap_servers).rdkafka(), "acks": 1, "linger.ms": 20,
                         "batch.size": 512 * 1024, "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    started = time.monotonic()
    produce_all(producer, topic, islice(records, count))
    return count / (time.monotonic() - started)


def produce_all(producer: Producer, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    """Send every (key, value) record with librdkafka and wait until the broker acknowledged them all."""
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key=key)
                break
            except BufferError:  # librdkafka's queue is full: let it send
                producer.poll(0.01)
    if producer.flush(60):
        raise RuntimeError("the broker did not acknowledge every record within 60 s")


def _consumer(bootstrap_servers: str, topics: list[str]) -> Consumer:
    """One consumer of every partition of `topics`, from their start."""
    connection = KafkaConnection(bootstrap_servers)
    consumer = Consumer({**connection.rdkafka(), "group.id": f"floor-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                         "fetch.max.bytes": 64 * 2**20})  # fmt: skip
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)
                     for topic in topics for partition in metadata.topics[topic].partitions])  # fmt: skip
    return consumer


def _records(messages: list) -> dict[str, pa.Table]:
    """A poll's records as the Spark source's columns (`RECORD_COLUMNS`), per topic."""
    by_topic: dict[str, list] = {}
    for message in messages:
        if message.error() is not None:
            raise KafkaException(message.error())
        by_topic.setdefault(message.topic(), []).append(message)
    tables = {}
    for topic, part in by_topic.items():
        columns = {
            "topic": [topic] * len(part),
            "partition": [m.partition() for m in part],
            "offset": [m.offset() for m in part],
            "timestamp": [datetime.fromtimestamp(m.timestamp()[1] / 1000, UTC) for m in part],
            "key": [m.key() for m in part],
            "value": [m.value() for m in part],
        }
        tables[topic] = pa.table({name: columns[name] for name in RECORD_COLUMNS})
    return tables


def consume_plainly(
    bootstrap_servers: str, contracts: dict[str, str], expected: int, lake: Path | None = None
) -> float:
    """Events/s of one consumer reading `expected` records of the topics (topic → contract) from their start,
    validating them, and with `lake` writing the valid events as Parquet per topic and day."""
    consumer = _consumer(bootstrap_servers, list(contracts))
    read, started, files = 0, time.monotonic(), 0
    try:
        while read < expected:
            if time.monotonic() - started > 600:
                raise RuntimeError(f"read {read:,} of {expected:,} records in 600 s")
            messages = consumer.consume(num_messages=POLL_RECORDS, timeout=0.5)
            read += len(messages)
            for topic, records in _records(messages).items():
                valid = split_records(records, contracts[topic], MAX_FUTURE, datetime.now(UTC)).valid
                if lake is None or valid.num_rows == 0:
                    continue
                days = pc.strftime(valid["ts"], format="%Y-%m-%d")
                for day in pc.unique(days).to_pylist():
                    directory = lake / topic / f"date={day}"
                    directory.mkdir(parents=True, exist_ok=True)
                    pq.write_table(valid.filter(pc.equal(days, day)), directory / f"part-{files:06d}.parquet")
                    files += 1
        return read / (time.monotonic() - started)
    finally:
        consumer.close()


def _sensor_stats_partials(valid: pa.Table, window_s: int) -> list[dict]:
    """A poll's readings folded into `sensor_stats`'s partial rows (one per window, sensor and location)."""
    rows: dict[tuple, dict] = {}
    for event in valid.select(["sensor_id", "location", "ts", "temperature", "humidity", "pressure",
                               "battery"]).to_pylist():  # fmt: skip
        start = event["ts"].timestamp() // window_s * window_s
        key = (start, event["sensor_id"], event["location"])
        row = rows.get(key)
        if row is None:
            rows[key] = {
                "window_start": datetime.fromtimestamp(start, UTC), "sensor_id": event["sensor_id"],
                "location": event["location"], "events": 1, "temperature_sum": event["temperature"],
                "temperature_min": event["temperature"], "temperature_max": event["temperature"],
                "humidity_sum": event["humidity"], "pressure_sum": event["pressure"],
                "battery_min": event["battery"],
            }  # fmt: skip
            continue
        row["events"] += 1
        row["temperature_sum"] += event["temperature"]
        row["temperature_min"] = min(row["temperature_min"], event["temperature"])
        row["temperature_max"] = max(row["temperature_max"], event["temperature"])
        row["humidity_sum"] += event["humidity"]
        row["pressure_sum"] += event["pressure"]
        row["battery_min"] = min(row["battery_min"], event["battery"])
    return list(rows.values())


def serve_sensor_stats_plainly(
    bootstrap_servers: str, topic: str, store_url: str, stop: Callable[[], bool] = lambda: False
) -> None:
    """Until `stop`: consume the IoT topic (a fresh one, from its start), and merge each poll's
    `sensor_stats` rows into the store (the speed layer's merge and upsert, one transaction a poll)."""
    from speed.view_writes import merge_view, write_view

    settings = Settings()
    engine = store.engine(store_url)
    consumer = _consumer(bootstrap_servers, [topic])
    try:
        while not stop():
            messages = consumer.consume(num_messages=POLL_RECORDS, timeout=0.1)
            for records in _records(messages).values():
                valid = split_records(records, "iot_sensors", MAX_FUTURE, datetime.now(UTC)).valid
                rows = _sensor_stats_partials(valid, settings.window_seconds)
                if rows:
                    with engine.begin() as connection:
                        merged = merge_view(connection, settings, "sensor_stats", rows)
                        write_view(connection, "sensor_stats", merged, datetime.now(UTC))
    finally:
        consumer.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description="a benchmark's floor as its own process")
    parser.add_argument("floor", choices=["freshness"])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--store-url", required=True)
    args = parser.parse_args()
    stopping: list[int] = []
    signal.signal(signal.SIGINT, lambda number, _: stopping.append(number))
    signal.signal(signal.SIGTERM, lambda number, _: stopping.append(number))
    stop = lambda: bool(stopping)  # noqa: E731
    serve_sensor_stats_plainly(args.bootstrap_servers, args.topic, args.store_url, stop=stop)


if __name__ == "__main__":
    main()
