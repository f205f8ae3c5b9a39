"""The lake archiver end to end: real broker, real Spark, the lambdaflow CLI for producing.

Ground truth is what is actually in the topics (read with plain kafka-python) judged by `tests.oracle`,
written independently of the contracts module.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from ingestion.archiver import ArchiveTask, start_archiver, status_path
from lambdaflow.kafka import KafkaConnection
from tests.conftest import LAMBDAFLOW, ROOT, run_cli, settings_env
from tests.kafka_helpers import consume_all
from tests.oracle import is_valid, parse_ts

pytestmark = pytest.mark.integration
FAULTS = ["--duplicates", "0.05", "--late", "0.05", "--out-of-order", "0.1", "--malformed", "0.05"]


def lake_rows(settings, kind: str, topic: str) -> list[dict]:
    base = settings.lake_dir / kind / topic
    if not base.exists():
        return []
    return pq.read_table(base, partitioning="hive").to_pylist()


def archive_once(spark, settings) -> None:
    query = start_archiver(spark, settings, once=True)
    query.awaitTermination()
    assert query.exception() is None


def assert_lake_matches_topics(settings, produced: dict[str, int]) -> dict[str, Counter]:
    """The lake holds every valid record once per coordinate, the quarantine every invalid one."""
    contracts = {settings.topic_iot: "iot_sensors", settings.topic_activity: "user_activity"}
    outcome = {}
    for topic, count in produced.items():
        records = consume_all(settings.kafka_bootstrap_servers, topic, count)
        assert len(records) == count
        valid = {r.coordinates: r for r in records if is_valid(contracts[topic], r.value, r.timestamp)}
        invalid = {r.coordinates: r for r in records if r.coordinates not in valid}

        raw = lake_rows(settings, "raw", topic)
        coordinates = [(row["_topic"], row["_partition"], row["_offset"]) for row in raw]
        assert len(coordinates) == len(set(coordinates)), "a Kafka record landed twice in the lake"
        assert set(coordinates) == set(valid)
        for row in raw:
            source = json.loads(valid[(row["_topic"], row["_partition"], row["_offset"])].value)
            assert row["event_id"] == source["event_id"]
            assert row["ts"] == parse_ts(source["ts"])
            assert row["date"] == row["ts"].date().isoformat()
            for field in ("temperature", "humidity", "pressure", "battery", "amount"):
                if field in row:
                    assert row[field] == source.get(field)

        quarantined = lake_rows(settings, "quarantine", topic)
        by_coordinates = {(row["_topic"], row["_partition"], row["_offset"]): row for row in quarantined}
        assert len(by_coordinates) == len(quarantined), "an invalid record was quarantined twice"
        assert set(by_coordinates) == set(invalid)
        for coordinates, row in by_coordinates.items():
            assert row["value"] == invalid[coordinates].value
            assert row["reason"]
        assert len(raw) + len(quarantined) == count
        outcome[topic] = Counter(valid=len(raw), invalid=len(quarantined))
    return outcome


def injected(stderr: str, fault: str) -> int:
    found = re.search(rf"{fault} ([\d,]+)", stderr)
    return int(found.group(1).replace(",", "")) if found else 0


def test_every_record_lands_once_with_every_fault_injected(spark, settings):
    env = settings_env(settings)
    iot = run_cli(["produce", "iot", "--count", "3000", "--rate", "0", "--seed", "7", *FAULTS], env)
    activity = run_cli(["produce", "activity", "--count", "3000", "--rate", "0", "--seed", "8", *FAULTS], env)
    assert "sent 3,000 records" in iot.stderr and "sent 3,000 records" in activity.stderr

    archive_once(spark, settings)
    outcome = assert_lake_matches_topics(settings, {settings.topic_iot: 3000, settings.topic_activity: 3000})

    for topic, produced in ((settings.topic_iot, iot), (settings.topic_activity, activity)):
        # every malformed record is quarantined, and nothing else is
        assert outcome[topic]["invalid"] == injected(produced.stderr, "malformed") > 0
        for fault in ("duplicate", "late", "out-of-order"):
            assert injected(produced.stderr, fault) > 0
        # duplicates are separate Kafka records: the lake keeps both, batch dedupes on event_id
        raw = lake_rows(settings, "raw", topic)
        assert len(raw) - len({row["event_id"] for row in raw}) == injected(produced.stderr, "duplicate")

    # the dead-letter topic has each invalid record with its reason and source coordinates
    invalid_total = sum(o["invalid"] for o in outcome.values())
    letters = consume_all(settings.kafka_bootstrap_servers, settings.topic_dead_letter, invalid_total)
    sources = set()
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers}
        assert headers["lambdaflow.error.reason"]
        sources.add((headers["lambdaflow.source.topic"], int(headers["lambdaflow.source.partition"]),
                     int(headers["lambdaflow.source.offset"])))  # fmt: skip
    quarantined = {
        (row["_topic"], row["_partition"], row["_offset"])
        for topic in outcome
        for row in lake_rows(settings, "quarantine", topic)
    }
    assert sources == quarantined

    status = json.loads(status_path(settings).read_text())
    assert {t: (s["valid"], s["invalid"]) for t, s in status["topics"].items()} == {
        t: (o["valid"], o["invalid"]) for t, o in outcome.items()
    }

    # running again with nothing new changes nothing
    archive_once(spark, settings)
    assert (
        assert_lake_matches_topics(settings, {settings.topic_iot: 3000, settings.topic_activity: 3000})
        == outcome
    )


def test_kill_9_mid_stream_then_restart_gives_the_same_exact_lake(make_settings):
    settings = make_settings(max_records_per_trigger=1000, archive_trigger_seconds=0.2)
    env = settings_env(settings)
    produce = [*LAMBDAFLOW, "produce", "--count", "12000", "--rate", "1500", *FAULTS]
    producers = [
        subprocess.Popen(
            [*produce, kind, "--seed", seed], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        for kind, seed in (("iot", "1"), ("activity", "2"))
    ]
    archiver = subprocess.Popen([*LAMBDAFLOW, "archive"], env=env, cwd=ROOT, start_new_session=True,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    status = status_path(settings)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if status.exists() and json.loads(status.read_text())["last_batch_id"] >= 4:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the archiver made no progress")
    time.sleep(random.Random().uniform(0, 1.0))
    os.killpg(archiver.pid, signal.SIGKILL)  # the Python driver and its Spark JVM, mid-batch
    archiver.wait()
    killed_at = json.loads(status.read_text())["last_batch_id"]
    for producer in producers:
        assert producer.wait(timeout=120) == 0, producer.stderr.read()

    run_cli(["archive", "--once"], env)
    outcome = assert_lake_matches_topics(
        settings, {settings.topic_iot: 12000, settings.topic_activity: 12000}
    )
    assert sum(o["valid"] + o["invalid"] for o in outcome.values()) == 24000
    assert json.loads(status.read_text())["last_batch_id"] > killed_at


def test_from_file_round_trip_reproduces_valid_events_field_by_field(spark, settings, tmp_path):
    rng = random.Random(3)
    start = datetime.now(UTC) - timedelta(hours=30)
    events = [
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "sensor_id": f"sensor-{rng.randrange(20):04d}",
            "location": rng.choice(["lab", "roof", "Greenhouse "]),
            "ts": (start + timedelta(seconds=97 * n)).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{rng.randrange(1000):03d}Z",
            "temperature": round(rng.uniform(-50, 100), 3),
            "humidity": rng.choice([0, 100, round(rng.uniform(0, 100), 2)]),
            "pressure": round(rng.uniform(800, 1200), 1),
            "battery": round(rng.uniform(0, 100), 2),
        }
        for n in range(400)
    ]
    lines = [json.dumps(event) for event in events]
    bad_lines = ['{"event_id": "x"', "plain text", json.dumps({**events[0], "temperature": 101})]
    for position, line in zip((5, 50, 399), bad_lines, strict=True):
        lines.insert(position, line)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")

    result = run_cli(
        ["produce", "--from-file", str(source), "--topic", settings.topic_iot], settings_env(settings)
    )
    assert f"sent {len(lines)} records" in result.stderr
    archive_once(spark, settings)

    raw = lake_rows(settings, "raw", settings.topic_iot)
    assert len(raw) == len(events)
    by_id = {row["event_id"]: row for row in raw}
    for event in events:
        row = by_id[event["event_id"]]
        assert (
            row["ts"].strftime("%Y-%m-%dT%H:%M:%S.") + f"{row['ts'].microsecond // 1000:03d}Z" == event["ts"]
        )
        for field in ("sensor_id", "location", "temperature", "humidity", "pressure", "battery"):
            assert row[field] == event[field], field
    quarantined = lake_rows(settings, "quarantine", settings.topic_iot)
    assert sorted(row["value"] for row in quarantined) == sorted(line.encode() for line in bad_lines)
    # keys follow the contract: sensor_id for IoT readings
    records = consume_all(settings.kafka_bootstrap_servers, settings.topic_iot, len(lines))
    for record in records:
        if record.value == b"plain text":
            assert record.key is None
        elif record.value.endswith(b"}"):
            assert record.key == json.loads(record.value)["sensor_id"].encode()


def test_sigterm_drains_what_the_broker_holds_before_the_stream_stops(make_settings):
    """SIGTERM right after a burst: the lake archiver (a 10 s trigger, so its next micro-batch is seconds
    away) still archives every record the broker held, then the app stops with exit 0."""
    settings = make_settings(archive_trigger_seconds=10.0)
    env = settings_env(settings)
    app = subprocess.Popen([*LAMBDAFLOW, "stream", "--only", "archiver"], env=env, cwd=ROOT,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    run_cli(["produce", "iot", "--count", "500", "--rate", "0", "--seed", "3", *FAULTS], env)
    status = status_path(settings)
    deadline = time.monotonic() + 180
    while not status.exists():  # its first micro-batch ran: the next is up to 10 s away
        assert app.poll() is None and time.monotonic() < deadline, "the archiver made no progress"
        time.sleep(0.2)
    for kind, seed in (("iot", "4"), ("activity", "5")):
        run_cli(["produce", kind, "--count", "3000", "--rate", "0", "--seed", seed, *FAULTS], env)
    app.send_signal(signal.SIGTERM)
    _, stderr = app.communicate(timeout=180)
    assert app.returncode == 0, stderr[-3000:]
    assert "drained: every query processed what the broker held" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert_lake_matches_topics(settings, {settings.topic_iot: 3500, settings.topic_activity: 3000})


def test_a_task_given_no_record_batch_writes_nothing(tmp_path):
    """A task whose input has no Arrow batch at all (an empty partition) answers no stats, not an error."""
    task = ArchiveTask(batch_id=7, lake=tmp_path, contracts={"iot": "iot_sensors"},
                       max_future=timedelta(minutes=5), dead_letter_topic=None,
                       kafka=KafkaConnection("127.0.0.1:9"))  # fmt: skip
    assert list(task(iter([]))) == []
    assert list(tmp_path.iterdir()) == []
