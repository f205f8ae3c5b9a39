"""The embedded broker: `lambdaflow broker` starts Tansu with the topics, refuses a taken port in one line and
stops on Ctrl-C; with durable storage, records, offsets and consumer-group offsets survive a kill -9 of the
broker, of its object store, and a restart, and stopping (or killing its owner) leaves no process behind."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from lambdaflow import object_store
from lambdaflow.broker import BrokerError, EmbeddedBroker
from tests.conftest import LAMBDAFLOW, ROOT, free_port, run_cli

pytestmark = pytest.mark.integration

TOPIC, PARTITIONS, GROUP = "durable", 4, "readers"
Records = dict[tuple[int, int], str]  # (partition, offset) -> value


def test_broker_command_lifecycle(tmp_path):
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(tmp_path),
           "LAMBDAFLOW_BROKER_PORT": str(port)}  # fmt: skip
    broker = subprocess.Popen([*LAMBDAFLOW, "broker"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        ready = _ready_line(broker)
        assert f"broker ready on 127.0.0.1:{port}" in ready
        assert "(created iot_sensors, user_activity, dead_letter, alerts)" in ready
        assert f"storage durable in {tmp_path / 'broker'} through SeaweedFS S3 on http://127.0.0.1:" in ready

        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}")
        partitions = {t: len(consumer.partitions_for_topic(t) or ()) for t in consumer.topics()}
        consumer.close()
        assert partitions == {"iot_sensors": 4, "user_activity": 4, "dead_letter": 1, "alerts": 1}

        second = run_cli(["broker"], env, timeout=60, check=False)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"lambdaflow: port 127.0.0.1:{port} is already in use "
            "(another broker running? set LAMBDAFLOW_BROKER_PORT or stop it)"
        ]
    finally:
        broker.send_signal(signal.SIGINT)
        assert broker.wait(timeout=30) == 0
    assert "broker stopped" in broker.stderr.read()

    again = subprocess.Popen([*LAMBDAFLOW, "broker"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert "(created none)" in _ready_line(again), "the topics did not survive the restart"
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0


def test_broker_command_in_memory_says_so(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(tmp_path),
           "LAMBDAFLOW_BROKER_PORT": str(free_port()), "LAMBDAFLOW_BROKER_STORAGE": "memory"}  # fmt: skip
    broker = subprocess.Popen([*LAMBDAFLOW, "broker"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert "storage in memory (lost when the broker stops)" in _ready_line(broker)
    finally:
        broker.send_signal(signal.SIGINT)
        assert broker.wait(timeout=30) == 0
    assert not (tmp_path / "broker").exists()


def test_bad_storage_setting_is_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(tmp_path),
           "LAMBDAFLOW_BROKER_STORAGE": "disk"}  # fmt: skip
    result = run_cli(["broker"], env, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("lambdaflow: invalid setting LAMBDAFLOW_BROKER_STORAGE='disk'")


@pytest.mark.parametrize("ending", ["kill -9 Tansu", "kill -9 Tansu and SeaweedFS", "stop"])
def test_durable_storage_survives(tmp_path, ending):
    storage = tmp_path / "broker"
    with _durable(storage, tmp_path) as first:
        _create_topic(first)
        written = _produce(first, 0, 1_500)
        assert {partition for partition, _ in written} == set(range(PARTITIONS))
        ends = {p: 1 + max(o for q, o in written if q == p) for p in range(PARTITIONS)}
        committed = {p: end // 2 for p, end in ends.items()}
        _commit(first, committed)
        if ending.startswith("kill -9"):
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait()
        if ending == "kill -9 Tansu and SeaweedFS":
            os.kill(first.object_store.process.pid, signal.SIGKILL)
            first.object_store.process.wait()
    # leaving the block stops whatever still runs: SeaweedFS after a kill -9 of Tansu alone

    with _durable(storage, tmp_path) as second:
        assert _read_all(second, len(written)) == written  # the same records at the same offsets
        assert _committed(second) == committed
        more = _produce(second, 1_500, 500)
        for partition in {p for p, _ in more}:
            # each partition goes on from where it ended
            assert min(o for p, o in more if p == partition) == ends[partition]
        assert _read_all(second, len(written) + len(more)) == {**written, **more}


@pytest.mark.parametrize("depth", ["short", "deep"])
def test_stop_leaves_no_process_and_no_socket(tmp_path, depth):
    # a Unix socket's path has at most 107 bytes: a deep directory puts weed's sockets in a temporary folder
    storage = tmp_path / ("d" * 90 if depth == "deep" else "") / "broker"
    broker = _durable(storage, tmp_path).start()
    processes = [psutil.Process(broker.process.pid), psutil.Process(broker.object_store.process.pid)]
    leftovers = broker.object_store._leftovers()
    assert len(leftovers) == (5 if depth == "deep" else 4)
    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 15
    assert not any(_alive(process) for process in processes)
    assert not any(path.exists() for path in leftovers)
    assert not list(Path("/tmp").glob("weed.*.log.*")), "SeaweedFS wrote its log into /tmp"


def test_a_killed_owner_takes_the_broker_along(tmp_path):
    """A kill -9 of the process that started the broker (`lambdaflow up`, say) ends Tansu and SeaweedFS, and
    frees the storage for the next start."""
    storage = tmp_path / "broker"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from lambdaflow.broker import EmbeddedBroker, free_port\n"
        "b = EmbeddedBroker('127.0.0.1', free_port(), storage=Path(sys.argv[1])).start()\n"
        "print(b.process.pid, b.object_store.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script, str(storage)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 2, "the broker did not start"
        processes = [psutil.Process(pid) for pid in pids]
    finally:
        owner.kill()
        owner.wait()
    psutil.wait_procs(processes, timeout=15)
    assert not any(_alive(process) for process in processes)
    leftovers = [Path(line.split(" ", 1)[1]) for line in (storage / "lock").read_text().splitlines()[1:]]
    assert len(leftovers) == 4 and all(path.exists() for path in leftovers), "weed's sockets in /tmp"
    with _durable(storage, tmp_path) as again:  # the storage is free at once
        assert again.failure() is None
        assert not any(path.exists() for path in leftovers), "the next start removes what a kill left"


def test_one_broker_per_storage(tmp_path, monkeypatch):
    monkeypatch.setattr(object_store, "LOCK_WAIT_S", 0.5)
    storage = tmp_path / "broker"
    with _durable(storage, tmp_path) as first:
        second = _durable(storage, tmp_path)
        in_use = r"the broker storage .* is in use \(broker \d+, SeaweedFS \d+\); stop that broker first"
        with pytest.raises(BrokerError, match=in_use):
            second.start()
        assert second.process is None
        assert first.failure() is None


def _ready_line(broker: subprocess.Popen) -> str:
    line = ""
    deadline = time.monotonic() + 60
    while "broker ready" not in line and time.monotonic() < deadline:
        line = broker.stderr.readline()
        assert line or broker.poll() is None, "the broker exited during start-up"
    return line


def _durable(storage: Path, tmp_path: Path) -> EmbeddedBroker:
    log = tmp_path / "logs" / "broker.log"
    return EmbeddedBroker("127.0.0.1", free_port(), log_path=log, storage=storage)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _create_topic(broker: EmbeddedBroker) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        admin.close()


def _produce(broker: EmbeddedBroker, first: int, count: int) -> Records:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    try:
        sent = [(f"v{i}", producer.send(TOPIC, key=f"k{i % 37}".encode(), value=f"v{i}".encode()))
                for i in range(first, first + count)]  # fmt: skip
        producer.flush()
        acknowledged = [(value, future.get(timeout=30)) for value, future in sent]
    finally:
        producer.close()
    return {(meta.partition, meta.offset): value for value, meta in acknowledged}


def _read_all(broker: EmbeddedBroker, expected: int) -> Records:
    """Every record of the topic from the start: until `expected` have come and a second passes without
    more (Tansu's ListOffsets is only a lower bound of the end)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records: Records = {}
    deadline, quiet_until = time.monotonic() + 60, None
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for items in batch.values():
                records.update({(r.partition, r.offset): r.value.decode() for r in items})
            if len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if batch:
                    quiet_until = time.monotonic() + 1.0
                elif time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return records


def _commit(broker: EmbeddedBroker, offsets: dict[int, int]) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, group_id=GROUP, enable_auto_commit=False
    )
    try:
        consumer.commit({TopicPartition(TOPIC, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
    finally:
        consumer.close()


def _committed(broker: EmbeddedBroker) -> dict[int, int | None]:
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, group_id=GROUP, enable_auto_commit=False
    )
    try:
        return {p: consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close()


def test_a_port_taken_before_seaweedfs_binds_it_means_other_ports(tmp_path, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    choose = object_store._distinct_free_ports
    choices = [{**choose(), "s3": taken.getsockname()[1]}]  # the first start's S3 port is taken
    monkeypatch.setattr(object_store, "_distinct_free_ports", lambda: choices.pop() if choices else choose())
    store = object_store.SeaweedS3(tmp_path / "broker")
    try:
        store.start()
        assert store.ports["s3"] != taken.getsockname()[1]
        assert store.failure() is None
    finally:
        store.stop()
        taken.close()
    assert store.log_path.read_text().count("bind: address already in use") == 1
