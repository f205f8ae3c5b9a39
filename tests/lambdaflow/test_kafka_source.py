"""The Spark Kafka source against the real broker: exact ranges, admission control, availableNow."""

import re

import pytest
from kafka import TopicPartition

from lambdaflow.kafka_source import (
    FORMAT,
    SMALL_BATCH_ROWS,
    EndOffsetProbe,
    KafkaRange,
    KafkaRanges,
    KafkaStreamReader,
    client_config,
    limit_rows,
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
    """One consumer per Python worker reads every range of a task at once, and then the next task's."""
    topic, bootstrap = settings.topic_iot, settings.kafka_bootstrap_servers
    values = [f"record-{n}".encode() for n in range(800)]
    produce_values(bootstrap, topic, values, [str(n % 11).encode() for n in range(800)])
    truth = {(r.partition, r.offset): r.value for r in consume_all(bootstrap, topic, 800)}
    ends = {p: 1 + max(offset for partition, offset in truth if partition == p) for p, _ in truth}
    assert len(ends) == 4
    config = client_config(settings.kafka_source_options())

    def read(ranges):
        rows = [row for batch in read_ranges(config, ranges) for row in batch.to_pylist()]
        assert all(row["topic"] == topic for row in rows)
        return {(row["partition"], row["offset"]): row["value"] for row in rows}

    # the first halves (each partition's records go on past its range), then the second halves and an
    # empty range, with the same consumer
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
    config = client_config(settings.kafka_source_options())
    ranges = (KafkaRange(topic, partition, 0, len(values)),)
    rows = [row for batch in read_ranges(config, ranges) for row in batch.to_pylist()]
    assert [row["offset"] for row in rows] == list(range(len(values)))
    assert [row["value"] for row in rows] == values


def test_end_offsets_are_each_partitions_high_watermark_however_its_records_were_batched(settings):
    """The probe's ends are exact: not the start of the last record batch + 1 (Tansu's ListOffsets), and
    0 for a partition with no records."""
    topic, bootstrap = settings.topic_iot, settings.kafka_bootstrap_servers
    probe = EndOffsetProbe(client_config(settings.kafka_source_options()))
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


def test_reads_every_record_exactly_once_in_capped_batches(spark, settings, tmp_path):
    topic = settings.topic_iot  # 4 partitions
    values = [f"record-{n}".encode() for n in range(5000)]
    produce_values(
        settings.kafka_bootstrap_servers, topic, values, [str(n % 13).encode() for n in range(5000)]
    )
    stream = (
        spark.readStream.format(FORMAT)
        .options(**settings.kafka_source_options())
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
        .options(**settings.kafka_source_options())
        .option("subscribe", "no_such_topic_here")
        .load()
    )
    with pytest.raises(Exception, match="topic 'no_such_topic_here' does not exist"):
        collect_available(query, tmp_path / "c")
