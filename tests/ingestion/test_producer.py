"""The producer's fast path delivers exactly what kafka-python's public send() would, in the same places."""

import json
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

import ingestion.producer as producer_module
from ingestion.producer import RecordSender, SendReport, file_records, make_producer, send_records
from lambdaflow.kafka import KafkaConnection
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def placement(bootstrap: str, topic: str, count: int) -> dict[int, list[tuple[bytes, bytes]]]:
    by_partition = defaultdict(list)
    for record in sorted(consume_all(bootstrap, topic, count), key=lambda r: (r.partition, r.offset)):
        by_partition[record.partition].append((record.key, record.value))
    return dict(by_partition)


def test_fast_path_matches_public_send(broker):
    bootstrap = broker.bootstrap_servers
    topics = ["fast_path", "public_send", "default_partitioner"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, 4, 1) for name in topics])
    admin.close()
    records = [(f"sensor-{n % 37}".encode(), f"value-{n}".encode()) for n in range(3000)]

    producer = make_producer(KafkaConnection(bootstrap))
    fast = RecordSender(producer, "fast_path")
    assert fast.fast, "the pinned kafka-python should take the fast path"
    report = send_records(producer, "fast_path", records, progress=None)
    assert (report.sent, report.failed) == (3000, 0)

    public = RecordSender(producer, "public_send")
    public.fast = False
    for key, value in records:
        public.send(key, value)
    for key, value in records:  # kafka-python's own murmur2 partitioner
        producer.send("default_partitioner", key=key, value=value)
    producer.flush()
    producer.close()

    expected = placement(bootstrap, "default_partitioner", 3000)
    assert placement(bootstrap, "fast_path", 3000) == expected
    assert placement(bootstrap, "public_send", 3000) == expected


def test_send_report_summarises_faults():
    report = SendReport("t", sent=1000, elapsed_s=2.0)
    report.faults.update({"valid": 900, "malformed": 50, "malformed.not_json": 50, "out_of_order": 10})
    assert (
        report.summary() == "t: sent 1,000 records in 2.0 s (500/s); injected malformed 50, out-of-order 10"
    )


def test_file_records_keep_lines_byte_for_byte(tmp_path):
    source = tmp_path / "lines.jsonl"
    source.write_bytes(b'{"sensor_id": "s-1", "x": 1}\r\nnot json\n\n{"sensor_id": 5}\n')
    assert list(file_records(source, "sensor_id")) == [
        (b"s-1", b'{"sensor_id": "s-1", "x": 1}'),
        (None, b"not json"),
        (None, b""),
        (None, b'{"sensor_id": 5}'),
    ]


def test_counted_faults_are_exactly_the_records_sent(broker):
    """The fault injector counts a record when it yields it; nothing beyond --count may be pulled."""
    from ingestion.faults import FaultInjector, Faults
    from ingestion.simulators import IotSimulator, wall_clock

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    admin.create_topics([NewTopic("counted_faults", 4, 1)])
    admin.close()
    producer = make_producer(KafkaConnection(broker.bootstrap_servers))
    for count in (1, 7, 100, 2500):
        injector = FaultInjector(Faults(duplicates=0.5, malformed=0.2), seed=count)
        simulator = IotSimulator(seed=count)
        records = injector.apply(simulator.events(wall_clock), simulator.key)
        report = send_records(producer, "counted_faults", records, count=count, progress=None)
        counts = injector.counts
        assert report.sent == count == counts["valid"] + counts["malformed"] + counts["duplicate"]
    producer.close()


def test_runs_without_a_seed_never_repeat_event_ids_and_a_seed_reproduces(settings):
    from tests.conftest import run_cli, settings_env

    env = settings_env(settings)
    for args in ([], [], ["--seed", "5"], ["--seed", "5"]):
        run_cli(["produce", "iot", "--count", "200", "--rate", "0", *args], env)
    event_ids = [json.loads(record.value)["event_id"] for record in
                 consume_all(settings.kafka_bootstrap_servers, settings.topic_iot, 800)]  # fmt: skip
    assert len(event_ids) == 800
    # the two unseeded runs share no id; the two runs with --seed 5 send the same 200 ids
    assert len(set(event_ids)) == 600


def test_a_paced_producer_keeps_its_rate_sleeping_once_per_burst(broker, monkeypatch):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    admin.create_topics([NewTopic("paced", 4, 1)])
    admin.close()
    sleeps = []

    def recorded_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    # only the producer module's clock: kafka-python's threads keep the real `time.sleep`
    clock = SimpleNamespace(monotonic=time.monotonic, sleep=recorded_sleep)
    monkeypatch.setattr(producer_module, "time", clock)
    producer = make_producer(KafkaConnection(broker.bootstrap_servers))
    records = [(f"sensor-{n % 37}".encode(), f"value-{n}".encode()) for n in range(1500)]
    report = send_records(producer, "paced", records, rate=3000, progress=None)
    producer.close()
    assert (report.sent, report.failed) == (1500, 0)
    # never ahead of the rate by more than a burst, and one sleep per burst rather than per record
    assert report.elapsed_s >= 1499 / 3000 - producer_module.PACING_SLICE_S
    assert len(sleeps) <= 1500 / 3000 / producer_module.PACING_SLICE_S + 2
    assert all(s >= producer_module.PACING_SLICE_S for s in sleeps)
