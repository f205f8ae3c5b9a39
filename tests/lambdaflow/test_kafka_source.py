"""The Spark Kafka source against the real broker: exact ranges, admission control, availableNow, the
broker's end offsets, and the positions in an offset as a query's progress reports it."""

import contextlib
import json
import logging
import re
import time

import pytest
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from lambdaflow.kafka import KafkaConnection, source_options
from lambdaflow.kafka_source import (
    FORMAT,
    SMALL_BATCH_ROWS,
    TOPIC_IDS,
    BrokerEndOffsets,
    DataLossError,
    EndOffsetProbe,
    KafkaRange,
    KafkaRanges,
    KafkaStreamReader,
    broker_end_offsets,
    client_config,
    limit_rows,
    offset_positions,
    rdkafka_config,
    read_ranges,
    record_parser,
)
from tests.kafka_helpers import consume_all, produce_values

pytestmark = pytest.mark.integration


def collect_available(stream, checkpoint):
    """Run a query with the availableNow trigger and return every row it saw, and the query."""
    rows = []
    query = (
        stream.writeStream.foreachBatch(lambda batch, _: rows.extend(batch.collect()))
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return rows, query


def test_limit_rows_shares_the_cap_by_backlog():
    start = {"a:0": 0, "a:1": 10}
    ends = {"a:0": 300, "a:1": 110, "a:2": 0}
    capped = limit_rows(start, ends, 100)
    assert capped == {"a:0": 75, "a:1": 35, "a:2": 0}
    assert limit_rows(start, ends, 1000) == ends


def test_a_trickle_is_one_task_and_a_backlog_one_task_per_partition():
    reader = KafkaStreamReader({"subscribe": "a,b", "kafka.bootstrap.servers": "127.0.0.1:1"})
    start = {"a:0": 0, "a:1": 5, "b:0": 10}
    small = reader.partitions(start, {"a:0": 3, "a:1": 5, "b:0": 12})
    assert small == [KafkaRanges((KafkaRange("a", 0, 0, 3), KafkaRange("b", 0, 10, 12)))]
    big = reader.partitions(start, {"a:0": SMALL_BATCH_ROWS, "a:1": 6, "b:0": 10})
    assert big == [KafkaRange("a", 0, 0, SMALL_BATCH_ROWS), KafkaRange("a", 1, 5, 6)]


def test_client_options_follow_the_spark_kafka_convention():
    config = client_config(
        {"kafka.bootstrap.servers": "h:1", "KAFKA.SECURITY.PROTOCOL": "SASL_SSL", "x": "y"}
    )
    assert config == {"bootstrap_servers": "h:1", "security_protocol": "SASL_SSL"}
    with pytest.raises(ValueError, match=re.escape("kafka.bootstrap.servers")):
        client_config({})
    with pytest.raises(ValueError, match=re.escape("unsupported Kafka client option 'kafka.linger.ms'")):
        client_config({"kafka.bootstrap.servers": "h:1", "kafka.linger.ms": "5"})


def test_the_readers_librdkafka_settings_take_an_event_hubs_connection():
    from confluent_kafka import Consumer

    secret = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=read;SharedAccessKey=c2VjcmV0"
    options = {
        "kafka.bootstrap.servers": "ns.servicebus.windows.net:9093", "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN", "kafka.sasl.plain.username": "$ConnectionString",
        "kafka.sasl.plain.password": secret,
    }  # fmt: skip
    settings = rdkafka_config(client_config(options))
    assert {key: settings[key] for key in ("bootstrap.servers", "security.protocol", "sasl.mechanism")} == {
        "bootstrap.servers": "ns.servicebus.windows.net:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
    }
    assert (settings["sasl.username"], settings["sasl.password"]) == ("$ConnectionString", secret)
    Consumer(settings).close()  # librdkafka checks every setting when the client is made


def test_the_contract_option_validates_as_it_reads_and_names_a_bad_contract():
    assert record_parser({}) is None  # raw records
    parse = record_parser({"contract": "iot_sensors", "maxFutureSeconds": "60"})
    assert (parse.contract, parse.max_future.total_seconds()) == ("iot_sensors", 60)
    with pytest.raises(ValueError, match=re.escape("option 'contract' must be one of")):
        record_parser({"contract": "iot"})


def test_a_task_reads_exactly_its_ranges_of_several_partitions_again_and_again(settings):
    """A task reads all its ranges at once, exactly, and the next task (its own consumer) its own."""
    topic, bootstrap = settings.topic_iot, settings.kafka_bootstrap_servers
    values = [f"record-{n}".encode() for n in range(800)]
    produce_values(bootstrap, topic, values, [str(n % 11).encode() for n in range(800)])
    truth = {(r.partition, r.offset): r.value for r in consume_all(bootstrap, topic, 800)}
    ends = {p: 1 + max(offset for partition, offset in truth if partition == p) for p, _ in truth}
    assert len(ends) == 4
    config = client_config(source_options(settings))

    def read(ranges):
        rows = [row for batch in read_ranges(config, ranges) for row in batch.to_pylist()]
        assert all(row["topic"] == topic for row in rows)
        return {(row["partition"], row["offset"]): row["value"] for row in rows}

    # the first halves (each partition's records go on past its range), then the second halves and an
    # empty range, and the first halves again
    first = tuple(KafkaRange(topic, p, 0, end // 2) for p, end in sorted(ends.items()))
    second = (*(KafkaRange(topic, p, end // 2, end) for p, end in sorted(ends.items())),
              KafkaRange(topic, 0, ends[0], ends[0]))  # fmt: skip
    for ranges in (first, second, first):
        expected = {
            key: value for key, value in truth.items()
            for part in ranges if key[0] == part.partition and part.start <= key[1] < part.end
        }  # fmt: skip
        assert read(ranges) == expected


def test_a_range_larger_than_one_fetch_answer_is_read_whole_and_in_order(settings):
    """Tansu caps a Fetch answer at 5 MiB: a 6.4 MB range takes two Fetches, the partition assigned until the
    second answer is read."""
    topic, bootstrap = settings.topic_iot, settings.kafka_bootstrap_servers
    values = [f"{n:06d}".encode() * 1366 for n in range(800)]  # ~8 KB each
    produce_values(bootstrap, topic, values, [b"one-partition"] * len(values))
    (partition,) = {record.partition for record in consume_all(bootstrap, topic, len(values))}
    config = client_config(source_options(settings))
    ranges = (KafkaRange(topic, partition, 0, len(values)),)
    rows = [row for batch in read_ranges(config, ranges) for row in batch.to_pylist()]
    assert [row["offset"] for row in rows] == list(range(len(values)))
    assert [row["value"] for row in rows] == values


def test_end_offsets_are_each_partitions_high_watermark_however_its_records_were_batched(settings):
    """The probe's ends are exact: not the start of the last record batch + 1 (Tansu's ListOffsets), and
    0 for a partition with no records. A fetch size set for the readers does not reach the probe's one-byte
    fetches."""
    topic, bootstrap = settings.topic_iot, settings.kafka_bootstrap_servers
    options = {**source_options(settings), "kafka.max.partition.fetch.bytes": str(1 << 20)}
    probe = EndOffsetProbe(client_config(options))
    partitions = probe.partitions([topic])
    try:
        assert probe.end_offsets(partitions) == {tp: 0 for tp in partitions}
        produced = 0
        for count in (500, 37):  # several records a batch (linger), then a few more
            values = [f"record-{produced + n}".encode() for n in range(count)]
            produce_values(bootstrap, topic, values, [b"one-key-only"] * count if produced else None)
            produced += count
            truth = consume_all(bootstrap, topic, produced)
            ends = {tp: 0 for tp in partitions}
            for record in truth:
                ends[TopicPartition(topic, record.partition)] += 1
            assert probe.end_offsets(partitions) == ends
    finally:
        probe.close()


def test_the_kept_end_offset_probe_answers_like_a_one_off_one_and_reconnects_after_a_failure(settings):
    """The progress recorder asks every few seconds through one kept probe; the command line asks once."""
    topic = settings.topic_iot
    produce_values(settings.kafka_bootstrap_servers, topic, [f"record-{n}".encode() for n in range(50)])
    once = broker_end_offsets(source_options(settings), [topic])
    assert sum(once.values()) == 50 and sorted(once) == [f"{topic}:{n}" for n in range(4)]
    ends = BrokerEndOffsets(KafkaConnection.from_settings(settings))
    try:
        assert ends.of_topics([topic]) == once
        probe = ends._probe
        assert ends(sorted(once)) == once and ends._probe is probe  # the same connection between calls
        with pytest.raises(ValueError, match="topic 'no_such_topic_here' does not exist"):
            ends.of_topics(["no_such_topic_here"])
        assert ends._probe is None and ends([f"{topic}:0"]) == {f"{topic}:0": once[f"{topic}:0"]}
    finally:
        ends.close()


def test_the_positions_of_an_offset_as_a_progress_report_gives_it_parsed_or_as_json():
    offset = {"iot:0": 6, "iot:1": 4, TOPIC_IDS: {"iot": "abc"}}
    assert offset_positions(offset) == offset_positions(json.dumps(offset)) == {"iot:0": 6, "iot:1": 4}
    for other_shape in (None, "", "42", "[1, 2]", "not json"):
        assert offset_positions(other_shape) == {}


def test_reads_every_record_exactly_once_in_capped_batches(spark, settings, tmp_path):
    topic = settings.topic_iot  # 4 partitions
    values = [f"record-{n}".encode() for n in range(5000)]
    produce_values(
        settings.kafka_bootstrap_servers, topic, values, [str(n % 13).encode() for n in range(5000)]
    )
    stream = (
        spark.readStream.format(FORMAT)
        .options(**source_options(settings))
        .option("subscribe", f"{topic},{settings.topic_activity}")
        .option("maxOffsetsPerTrigger", "700")
        .load()
    )
    rows, query = collect_available(stream, tmp_path / "checkpoint")
    assert len(rows) == 5000
    assert sorted(bytes(r.value) for r in rows) == sorted(values)
    assert len({(r.topic, r.partition, r.offset) for r in rows}) == 5000
    assert {r.partition for r in rows} == {0, 1, 2, 3}
    assert all(r.topic == topic and r.timestamp is not None for r in rows)
    batches = [p for p in query.recentProgress if p["numInputRows"]]
    assert len(batches) >= 8 and max(p["numInputRows"] for p in batches) <= 700

    # a restart from the checkpoint reads only what came after
    produce_values(settings.kafka_bootstrap_servers, topic, [b"late-1", b"late-2"])
    rows, _ = collect_available(stream, tmp_path / "checkpoint")
    assert sorted(bytes(r.value) for r in rows) == [b"late-1", b"late-2"]


def test_a_missing_topic_is_a_clear_error(spark, settings, tmp_path):
    query = (
        spark.readStream.format(FORMAT)
        .options(**source_options(settings))
        .option("subscribe", "no_such_topic_here")
        .load()
    )
    with pytest.raises(Exception, match="topic 'no_such_topic_here' does not exist"):
        collect_available(query, tmp_path / "c")


def recreate_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    """Delete `topic` and create it again: what a fresh in-memory broker or an operator's mistake does."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_topics([topic])
        # Tansu creates a topic on any metadata request naming it: a running query may have done it already
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def reader_for(settings, fail_on_data_loss: bool) -> KafkaStreamReader:
    options = {**source_options(settings), "subscribe": settings.topic_iot}
    return KafkaStreamReader({**options, "failOnDataLoss": str(fail_on_data_loss).lower()})


def read_all(reader: KafkaStreamReader, start: dict, end: dict) -> list[bytes]:
    return [
        bytes(value)
        for part in reader.partitions(start, end)
        for batch in reader.read(part)
        for value in batch.column("value").to_pylist()
    ]


def test_a_checkpoint_of_a_recreated_topic_fails_in_one_line_or_goes_on_from_the_earliest(settings, caplog):
    """A restarted reader (a new instance, as after `make run` again) against a topic recreated since its
    checkpoint: by default one line naming the partitions and offsets; with failOnDataLoss=false a warning
    and exactly the new topic's records. An old checkpoint without topic ids is caught by its offsets."""
    bootstrap, topic = settings.kafka_bootstrap_servers, settings.topic_iot
    before = [f"old-{n}".encode() for n in range(400)]
    produce_values(bootstrap, topic, before, [str(n % 7).encode() for n in range(400)])
    first = reader_for(settings, fail_on_data_loss=True)
    checkpoint = first.latestOffset(first.initialOffset(), first.getDefaultReadLimit())
    assert sorted(read_all(first, first.initialOffset(), checkpoint)) == sorted(before)
    first.stop()

    recreate_topic(bootstrap, topic)
    after = [f"new-{n}".encode() for n in range(30)]  # fewer than before: every partition ends lower
    produce_values(bootstrap, topic, after, [str(n % 7).encode() for n in range(30)])

    strict = reader_for(settings, fail_on_data_loss=True)
    with pytest.raises(DataLossError) as failure:
        strict.latestOffset(checkpoint, strict.getDefaultReadLimit())
    line = str(failure.value)
    assert "\n" not in line and line.startswith("data loss: ")
    assert f"{topic}:0 was recreated (topic id {checkpoint[TOPIC_IDS][topic]} is now" in line
    assert f"the checkpoint is at offset {checkpoint[f'{topic}:0']}" in line
    assert "LAMBDAFLOW_FAIL_ON_DATA_LOSS=false" in line
    strict.stop()

    without_ids = {key: value for key, value in checkpoint.items() if key != TOPIC_IDS}
    strict = reader_for(settings, fail_on_data_loss=True)
    with pytest.raises(DataLossError, match=rf"{topic}:\d ends at offset \d+ but the checkpoint is at \d+"):
        strict.latestOffset(without_ids, strict.getDefaultReadLimit())
    strict.stop()

    lenient = reader_for(settings, fail_on_data_loss=False)
    with caplog.at_level(logging.WARNING, logger="lambdaflow.kafka_source"):
        resumed = lenient.latestOffset(checkpoint, lenient.getDefaultReadLimit())
    assert "going on from the earliest offsets (failOnDataLoss=false)" in caplog.text
    assert sorted(read_all(lenient, checkpoint, resumed)) == sorted(after)
    # the next micro-batch goes on from there: nothing read twice, the new id kept
    assert lenient.latestOffset(resumed, lenient.getDefaultReadLimit())[TOPIC_IDS] == resumed[TOPIC_IDS]
    assert read_all(lenient, resumed, lenient.latestOffset(resumed, lenient.getDefaultReadLimit())) == []
    assert resumed[TOPIC_IDS][topic] != checkpoint[TOPIC_IDS][topic]
    lenient.stop()


def run_until(query, done, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert query.exception() is None, query.exception()
        assert time.monotonic() < deadline, "the query did not get there in time"
        time.sleep(0.2)


@pytest.mark.parametrize("fail_on_data_loss", [True, False])
def test_a_topic_recreated_under_a_running_query(spark, settings, tmp_path, fail_on_data_loss):
    """By default the query stops with the one line; with failOnDataLoss=false it reads every record of
    both topics exactly once."""
    bootstrap, topic = settings.kafka_bootstrap_servers, settings.topic_iot
    rows: list[bytes] = []
    stream = (
        spark.readStream.format(FORMAT)
        .options(**source_options(settings))
        .option("subscribe", topic)
        .option("failOnDataLoss", str(fail_on_data_loss).lower())
        .load()
    )
    query = (
        stream.writeStream.foreachBatch(lambda batch, _: rows.extend(bytes(r.value) for r in batch.collect()))
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(processingTime="0.5 seconds")
        .start()
    )
    try:
        before = [f"old-{n}".encode() for n in range(300)]
        produce_values(bootstrap, topic, before, [str(n % 5).encode() for n in range(300)])
        run_until(query, lambda: len(rows) >= len(before))
        recreate_topic(bootstrap, topic)
        after = [f"new-{n}".encode() for n in range(50)]
        produce_values(bootstrap, topic, after, [str(n % 5).encode() for n in range(50)])
        if fail_on_data_loss:
            with pytest.raises(Exception) as failure:
                query.awaitTermination(120)
            found = re.findall(r"data loss: [^\n]*", str(failure.value))
            assert found and f"{topic}:" in found[0] and "LAMBDAFLOW_FAIL_ON_DATA_LOSS=false" in found[0]
            assert sorted(rows) == sorted(before)  # nothing of the new topic was taken for the old one
        else:
            run_until(query, lambda: len(rows) >= len(before) + len(after))
            time.sleep(2)  # a few more micro-batches: nothing may come twice
            assert sorted(rows) == sorted(before + after)
    finally:
        query.stop()
