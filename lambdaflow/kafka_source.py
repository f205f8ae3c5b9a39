"""A Kafka source for Spark Structured Streaming, written with PySpark 4's Python Data Source API.

No Spark-Kafka connector jar can be installed here, so the tasks read with confluent-kafka (librdkafka) and
the driver keeps offsets with kafka-python. It follows the built-in connector's conventions:
`format("lambdaflow_kafka")`, options `subscribe`, `startingOffsets` (`earliest`/`latest`),
`maxOffsetsPerTrigger`, and `kafka.*` client settings (`kafka.bootstrap.servers`, `kafka.security.protocol`,
`kafka.sasl.mechanism`, …), and the same columns: topic, partition, offset, timestamp, key, value. With the
option `contract` (the subscribed topics' event contract; and `maxFutureSeconds`), it validates the records as
it reads them and gives that contract's event columns, the Kafka coordinates and an `_invalid` flag instead
(see `lambdaflow.records.ParseValid`).

Offsets are `{"<topic>:<partition>": next_offset}` plus each topic's id (`topic_ids`); each micro-batch has
one input partition per Kafka partition with new data, so a replayed batch reads exactly the same records.
Offsets never go missing silently (the option `failOnDataLoss`, default true, as in Spark's own source): a
checkpoint past a partition's end, a partition that is gone, a topic whose id changed (recreated) or records
deleted before they were read stop the query with one line naming topic, partition and offsets; with
`failOnDataLoss=false` the source logs that line as a warning and goes on from the earliest offsets.

End offsets come from a Fetch response's high watermark (`EndOffsetProbe`), not ListOffsets: correct on
Apache Kafka, and on Tansu, whose ListOffsets(LATEST) answers the base offset of the last record batch + 1.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from kafka import KafkaConsumer, TopicPartition
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from lambdaflow.contracts import MODELS
from lambdaflow.kafka import KafkaConnection
from lambdaflow.records import ParseValid, flagged_schema

log = logging.getLogger(__name__)

FORMAT = "lambdaflow_kafka"
# Offset entries that are not a partition's position: each topic's id when the offsets were taken, and the
# partitions a micro-batch reads from their earliest offset after a loss it was told to go on from.
TOPIC_IDS, RESETS = "topic_ids", "resets"
SCHEMA = "topic string, partition int, offset long, timestamp timestamp, key binary, value binary"
ARROW_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("key", pa.binary()),
        ("value", pa.binary()),
    ]
)
ARROW_BATCH_ROWS = 20_000
# A read fails when no record of its ranges arrives for this long, not when the whole read takes longer:
# Spark takes each yielded batch in its own time, which a JVM deep in garbage collection stretches.
READ_STALL_S = 120.0


def client_config(options: Mapping[str, str]) -> dict[str, Any]:
    """kafka-python keyword arguments from the source's `kafka.*` options (see `lambdaflow.kafka`)."""
    return KafkaConnection.from_source_options(options).kafka_python()


def offset_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def parse_offset_key(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition(":")
    return TopicPartition(topic, int(partition))


def positions(offsets: Mapping[str, Any]) -> dict[str, int]:
    """The partitions' positions in a source offset (topic names cannot hold a colon; the other entries
    have none)."""
    return {key: int(value) for key, value in offsets.items() if ":" in key}


def offset_positions(offset: str | Mapping[str, Any] | None) -> dict[str, int]:
    """The partitions' positions in a source offset as a query's progress reports it: its JSON (a listener's
    event, a stored progress row) or parsed (`StreamingQuery.lastProgress`). An offset of another source's
    shape, or none, gives none."""
    if isinstance(offset, str):
        offset = json.loads(offset) if offset.startswith("{") else None
    return positions(offset) if isinstance(offset, Mapping) else {}


class DataLossError(RuntimeError):
    """Offsets went missing; the message is one line naming the topic, partitions and offsets."""


def data_loss_line(losses: list[str], fail: bool) -> str:
    what = "; ".join(losses)
    if fail:
        return (
            f"data loss: {what}. Records were lost or the topic is not the one checkpointed; set "
            "LAMBDAFLOW_FAIL_ON_DATA_LOSS=false (failOnDataLoss) to go on from the earliest offsets"
        )
    return f"data loss: {what}; going on from the earliest offsets (failOnDataLoss=false)"


# A Fetch at this offset is past the end of any partition (see EndOffsetProbe).
PAST_ANY_END = 2**62


class EndOffsetProbe:
    """Finds each partition's high watermark from the answer to a Fetch at an offset past its end.

    Tansu answers such a Fetch with no records and the high watermark, at a constant cost; its ListOffsets is
    only a lower bound, and any Fetch below the end lists every record batch the partition holds, a cost that
    grows with the topic. Apache Kafka answers OFFSET_OUT_OF_RANGE instead; the consumer then resets to
    ListOffsets(LATEST), exact there, and the Fetch at that offset gives the high watermark."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._consumer = KafkaConsumer(
            **{**config, "max_partition_fetch_bytes": 1},  # only the Fetch answers' high watermarks are used
            enable_auto_commit=False,
            group_id=None,
            allow_auto_create_topics=False,  # asking about a topic must not create it (Tansu does anyway)
            auto_offset_reset="latest",  # taken only by a broker that refuses a Fetch past the end
            fetch_max_wait_ms=10,  # Tansu answers nothing to a Fetch with max wait 0
        )
        self._probes = 0

    def partitions(self, topics: list[str]) -> list[TopicPartition]:
        found = []
        for topic in topics:
            numbers = self._consumer.partitions_for_topic(topic)
            if not numbers:  # None on Kafka, an empty set on Tansu
                raise ValueError(f"topic {topic!r} does not exist on the broker")
            found += [TopicPartition(topic, number) for number in sorted(numbers)]
        return found

    def end_offsets(
        self, partitions: list[TopicPartition], timeout_s: float = 10.0
    ) -> dict[TopicPartition, int]:
        self._consumer.unsubscribe()  # fresh partition state, so every highwater below is from a new Fetch
        self._consumer.assign(partitions)
        # a new offset each time: the consumer takes a Fetch answer only for the offset it is at now, and may
        # still hold one that an earlier probe's consumer sent
        self._probes += 1
        for partition in partitions:
            self._consumer.seek(partition, PAST_ANY_END + self._probes)
        deadline = time.monotonic() + timeout_s
        pending = set(partitions)
        while pending and time.monotonic() < deadline:
            # short polls: a Fetch past the end returns no records, so a long poll would wait out its timeout
            self._consumer.poll(timeout_ms=5)
            pending = {tp for tp in pending if self._consumer.highwater(tp) is None}
        if pending:
            raise TimeoutError(f"no Fetch answer within {timeout_s:.0f} s for {sorted(map(str, pending))}")
        return {tp: self._consumer.highwater(tp) for tp in partitions}

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return self._consumer.beginning_offsets(partitions)

    def topic_ids(self, topics: list[str], wait_s: float = 0.0) -> dict[str, str]:
        """Each topic's id (a recreated topic gets a new one), where the broker gives ids. Asks for fresh
        metadata; waits up to `wait_s` for it, else the answer arrives in the background for the next call
        (a metadata round trip each micro-batch would wait out Tansu's request backoff)."""
        cluster = self._consumer._client.cluster  # kafka-python keeps the ids only there
        deadline = time.monotonic() + wait_s
        # waiting, twice: an update already under way may have been asked for before the change
        for _ in range(2 if wait_s > 0 else 1):
            update = cluster.request_update()
            while not update.is_done and time.monotonic() < deadline:
                self._consumer.poll(timeout_ms=5)
        found = {topic: cluster.topic_id(topic) for topic in topics}
        return {topic: str(found_id) for topic, found_id in found.items() if found_id is not None}

    def close(self) -> None:
        self._consumer.close()


class BrokerEndOffsets:
    """The broker's end offsets now, keyed like the source's offsets (`topic:partition`), from one
    `EndOffsetProbe` kept open between calls, so a caller that asks again and again (the speed layer's
    progress recorder) opens no connection each time; after a failure the next call opens a new one."""

    def __init__(self, connection: KafkaConnection) -> None:
        self.config = connection.kafka_python()
        self._probe: EndOffsetProbe | None = None

    def __call__(self, keys: list[str]) -> dict[str, int]:
        """The end offsets of these partitions (`topic:partition` keys)."""
        return self._ask(lambda probe: [parse_offset_key(key) for key in keys])

    def of_topics(self, topics: list[str]) -> dict[str, int]:
        """The end offsets of every partition of these topics."""
        return self._ask(lambda probe: probe.partitions(topics))

    def _ask(self, partitions: Callable[[EndOffsetProbe], list[TopicPartition]]) -> dict[str, int]:
        if self._probe is None:
            self._probe = EndOffsetProbe(self.config)
        try:
            ends = self._probe.end_offsets(partitions(self._probe))
        except Exception:
            self.close()  # a new connection next time
            raise
        return {offset_key(tp.topic, tp.partition): end for tp, end in ends.items()}

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


def broker_end_offsets(options: Mapping[str, str], topics: list[str]) -> dict[str, int]:
    """Each partition's end offset on the broker now, keyed like the source's offsets (one probe, closed)."""
    ends = BrokerEndOffsets(KafkaConnection.from_source_options(options))
    try:
        return ends.of_topics(topics)
    finally:
        ends.close()


@dataclass(frozen=True)
class KafkaRange(InputPartition):
    topic: str
    partition: int
    start: int
    end: int


@dataclass(frozen=True)
class KafkaRanges(InputPartition):
    """Several small ranges read by one task: a trickle of records spread over many Kafka partitions would
    otherwise cost one Spark task each, and per-task overhead, not data, would set the micro-batch time."""

    ranges: tuple[KafkaRange, ...]


# Micro-batches with fewer records than this are read by one task (see KafkaRanges).
SMALL_BATCH_ROWS = 20_000


def rdkafka_config(config: dict[str, Any]) -> dict[str, Any]:
    """The reading consumer's librdkafka settings from the kafka-python ones (`client_config`)."""
    return {
        "group.id": "lambdaflow-source",  # required by librdkafka; nothing subscribes or commits
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # a start offset already deleted by retention resumes at the oldest record kept, never at the end
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,  # Tansu answers nothing to a Fetch with max wait 0
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        **KafkaConnection.from_kafka_python(config).rdkafka(),
    }


def read_ranges(
    config: dict[str, Any], ranges: tuple[KafkaRange, ...], fail_on_data_loss: bool = True
) -> Iterator[pa.RecordBatch]:
    """Read offsets [start, end) of each range (one per Kafka partition) as Arrow record batches.

    All ranges are assigned at once, so one Fetch answers for every partition: Tansu holds a Fetch for its
    max wait (`fetch.wait.max.ms`), and reading the ranges in turn would wait that once per partition.
    Records are read with librdkafka (confluent-kafka), several times faster than kafka-python's decoding in
    Python; the driver's offset bookkeeping stays on kafka-python (`EndOffsetProbe`).

    Each read has its own consumer, closed at its end: Tansu holds an established fetch session's Fetch for
    its full max wait, which made small reads slow on a kept consumer, and librdkafka crashed the worker in a
    kept consumer's background metadata refresh after a topic it had read was deleted. A range whose first
    record comes after its start lost the records before it (retention deleted them before they were read):
    see `failOnDataLoss`."""
    consumer = Consumer(rdkafka_config(config))
    pending = {(part.topic, part.partition): part for part in ranges if part.end > part.start}
    position = {key: part.start for key, part in pending.items()}
    unread = set(pending)  # ranges no record of which has arrived yet
    columns: dict[str, list] = {name: [] for name in ARROW_SCHEMA.names}
    deadline = time.monotonic() + READ_STALL_S
    try:
        consumer.incremental_assign([KafkaTopicPartition(*key, position[key]) for key in pending])
        while pending:
            if time.monotonic() > deadline:
                (topic, number), part = next(iter(pending.items()))
                raise TimeoutError(
                    f"reading {topic}:{number} stalled at offset {position[topic, number]} of {part.end}"
                )
            wanted = sum(part.end - position[key] for key, part in pending.items())
            messages = consumer.consume(num_messages=min(wanted, 50_000), timeout=0.2)
            if not messages:  # past records that are not data (e.g. transaction markers) at a range's end
                for at in consumer.position([KafkaTopicPartition(*key) for key in pending]):
                    key = (at.topic, at.partition)
                    position[key] = max(position[key], at.offset)
            else:
                deadline = time.monotonic() + READ_STALL_S
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                key = (message.topic(), message.partition())
                part = pending.get(key)
                if part is None:  # prefetched past a range finished earlier
                    continue
                offset = message.offset()
                if key in unread:
                    unread.discard(key)
                    if offset > part.start:  # librdkafka resumed at the earliest record kept
                        _report_data_loss(part, offset, fail_on_data_loss)
                if offset >= part.end:  # prefetched past its range
                    position[key] = part.end
                    continue
                columns["topic"].append(part.topic)
                columns["partition"].append(part.partition)
                columns["offset"].append(offset)
                columns["timestamp"].append(message.timestamp()[1] * 1000)
                columns["key"].append(message.key())
                columns["value"].append(message.value())
                position[key] = offset + 1
                if len(columns["offset"]) >= ARROW_BATCH_ROWS:
                    yield _batch(columns)
                    deadline = time.monotonic() + READ_STALL_S  # Spark took the batch in its own time
            # A finished range's partition is unassigned at once: an assigned partition is fetched again and
            # again, and on Tansu each Fetch below the end lists every batch the partition holds.
            finished = [key for key, part in pending.items() if position[key] >= part.end]
            if finished:
                consumer.incremental_unassign([KafkaTopicPartition(*key) for key in finished])
                for key in finished:
                    del pending[key]
    finally:
        consumer.close()
    if columns["offset"]:
        yield _batch(columns)


def _report_data_loss(part: KafkaRange, first: int, fail: bool) -> None:
    lost = min(first, part.end) - part.start
    line = data_loss_line([f"{part.topic}:{part.partition} offsets {part.start} to {first - 1} are gone "
                           f"({lost:,} records of this micro-batch)"], fail)  # fmt: skip
    if fail:
        raise DataLossError(line)
    log.warning(line)


def _batch(columns: dict[str, list]) -> pa.RecordBatch:
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(columns["topic"], pa.string()),
            pa.array(columns["partition"], pa.int32()),
            pa.array(columns["offset"], pa.int64()),
            pa.array(columns["timestamp"], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            pa.array(columns["key"], pa.binary()),
            pa.array(columns["value"], pa.binary()),
        ],
        schema=ARROW_SCHEMA,
    )
    for values in columns.values():
        values.clear()
    return batch


def record_parser(options: Mapping[str, str]) -> ParseValid | None:
    """The validation the `contract` option asks for, if any."""
    contract = options.get("contract")
    if not contract:
        return None
    if contract not in MODELS:
        raise ValueError(f"option 'contract' must be one of {sorted(MODELS)}, not {contract!r}")
    return ParseValid(contract, timedelta(seconds=float(options.get("maxFutureSeconds", "3600"))))


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: Mapping[str, str]) -> None:
        self.config = client_config(options)
        self.parse = record_parser(options)
        self.topics = [topic.strip() for topic in options.get("subscribe", "").split(",") if topic.strip()]
        if not self.topics:
            raise ValueError("option 'subscribe' (comma-separated topics) is required")
        self.starting = options.get("startingOffsets", "earliest").lower()
        if self.starting not in ("earliest", "latest"):
            raise ValueError("option 'startingOffsets' must be 'earliest' or 'latest'")
        max_rows = options.get("maxOffsetsPerTrigger")
        self.max_rows = int(max_rows) if max_rows else None
        fail = options.get("failOnDataLoss", "true").lower()
        if fail not in ("true", "false"):
            raise ValueError("option 'failOnDataLoss' must be 'true' or 'false'")
        self.fail_on_data_loss = fail == "true"
        self._ids_checked = False  # the first check after a (re)start waits for fresh metadata
        self._broker_ends: dict[str, int] | None = None
        self._probe: EndOffsetProbe | None = None
        self._available_now_target: dict[str, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_probe"] = None  # live connections do not travel to the Python workers
        return state

    @property
    def probe(self) -> EndOffsetProbe:
        if self._probe is None:
            self._probe = EndOffsetProbe(self.config)
        return self._probe

    def _end_offsets(self) -> dict[str, int]:
        partitions = self.probe.partitions(self.topics)
        return {
            offset_key(tp.topic, tp.partition): end for tp, end in self.probe.end_offsets(partitions).items()
        }

    def initialOffset(self) -> dict[str, Any]:
        ids = self.probe.topic_ids(self.topics, wait_s=5.0)
        if self.starting == "latest":
            return {**self._end_offsets(), TOPIC_IDS: ids}
        partitions = self.probe.partitions(self.topics)
        begins = self.probe.beginning_offsets(partitions)
        return {**{offset_key(tp.topic, tp.partition): begins[tp] for tp in partitions}, TOPIC_IDS: ids}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows) if self.max_rows else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._available_now_target = self._end_offsets()

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, Any]:
        ends = self._available_now_target or self._end_offsets()
        self._broker_ends = dict(ends)
        begins = positions(start)
        # ids from the metadata the probe has (refreshed in the background), fresh after a restart or when
        # the offsets alone show a loss, so a reset records the new topic's id and happens once
        fresh = not self._ids_checked or any(at > ends.get(key, -1) for key, at in begins.items())
        ids = self.probe.topic_ids(self.topics, wait_s=5.0 if fresh else 0.0)
        self._ids_checked = True
        resets = self._check_data_loss(begins, start.get(TOPIC_IDS) or {}, ends, ids)
        # a partition that is gone is a loss: raised above, or dropped here when told to go on
        begins = {key: resets.get(key, at) for key, at in begins.items() if key in ends}
        if isinstance(limit, ReadMaxRows):
            ends = limit_rows(begins, ends, limit.max_rows)
        latest: dict[str, Any] = {**begins, **ends, TOPIC_IDS: {**(start.get(TOPIC_IDS) or {}), **ids}}
        if resets:
            latest[RESETS] = resets
        return latest

    def _check_data_loss(
        self, begins: dict[str, int], recorded_ids: dict[str, str], ends: dict[str, int], ids: dict[str, str]
    ) -> dict[str, int]:
        """The partitions (that still exist) to read from their earliest offset because their checkpointed
        position went missing; raises `DataLossError` instead unless `failOnDataLoss` is false."""
        losses, lost = [], []
        for key, at in sorted(begins.items()):
            tp = parse_offset_key(key)
            was, now = recorded_ids.get(tp.topic), ids.get(tp.topic)
            if tp.topic not in self.topics:
                continue
            if was and now and was != now:
                losses.append(f"{key} was recreated (topic id {was} is now {now}); the checkpoint is at "
                              f"offset {at}, the new partition ends at {ends.get(key, 0)}")  # fmt: skip
            elif key not in ends:
                losses.append(f"{key} no longer exists; the checkpoint is at offset {at}")
            elif at > ends[key]:
                losses.append(
                    f"{key} ends at offset {ends[key]} but the checkpoint is at {at} "
                    "(a fresh broker or a recreated topic)"
                )
            else:
                continue
            lost.append(tp)
        if not losses:
            return {}
        line = data_loss_line(losses, self.fail_on_data_loss)
        if self.fail_on_data_loss:
            raise DataLossError(line)
        log.warning(line)
        found = [tp for tp in lost if offset_key(tp.topic, tp.partition) in ends]
        earliest = self.probe.beginning_offsets(found) if found else {}
        return {offset_key(tp.topic, tp.partition): earliest[tp] for tp in found}

    def reportLatestOffset(self) -> dict[str, int] | None:
        """The broker's end offsets as last probed (before any `maxOffsetsPerTrigger` cap): Spark's progress
        shows them as the source's `latestOffset`, from which the lag is read."""
        return self._broker_ends

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> list[InputPartition]:
        ranges = []
        resets = end.get(RESETS) or {}
        for key, stop in sorted(positions(end).items()):
            tp = parse_offset_key(key)
            begin = int(resets.get(key, start.get(key, 0)))
            if int(stop) > begin:
                ranges.append(KafkaRange(tp.topic, tp.partition, begin, int(stop)))
        if len(ranges) > 1 and sum(r.end - r.start for r in ranges) < SMALL_BATCH_ROWS:
            return [KafkaRanges(tuple(ranges))]
        return list(ranges)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        ranges = partition.ranges if isinstance(partition, KafkaRanges) else (partition,)
        batches = read_ranges(self.config, ranges, self.fail_on_data_loss)  # type: ignore[arg-type]
        return self.parse(batches) if self.parse else batches

    def commit(self, end: dict[str, int]) -> None:
        """Offsets live in Spark's checkpoint; nothing is committed to Kafka."""

    def stop(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None


def limit_rows(start: dict[str, int], ends: dict[str, int], max_rows: int) -> dict[str, int]:
    """Cap a micro-batch at `max_rows`, shared among partitions in proportion to their backlog."""
    backlog = {key: end - start.get(key, 0) for key, end in ends.items()}
    total = sum(backlog.values())
    if total <= max_rows:
        return ends
    capped = {}
    for key, lag in backlog.items():
        share = (lag * max_rows) // total
        capped[key] = start.get(key, 0) + max(share, 1 if lag else 0)
    return capped


class KafkaDataSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> str | StructType:
        parse = record_parser(self.options)
        if parse is None:
            return SCHEMA
        return from_arrow_schema(flagged_schema(parse.contract), prefer_timestamp_ntz=False)

    def streamReader(self, schema: Any) -> KafkaStreamReader:
        return KafkaStreamReader(self.options)
