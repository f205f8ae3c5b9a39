"""The chaos suite (`make chaos`; in `make test` too): while a known set of events with duplicates, late,
out-of-order and malformed records is produced, the streaming application is killed with SIGKILL at random
points and restarted, the broker (Tansu and its object store) is killed and restarted, and the serving app
is killed once. Afterwards the lake holds every valid record exactly once by its Kafka coordinates, the
quarantine every invalid one, the recomputed batch views equal the pandas ground truth of the topics, the
speed views and the alerts equal it in every window no late event falls in (`ground_truth.late_windows`),
and each alert is stored once. The summary is printed and kept in test-artifacts/chaos.json."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from batch.publish import publish_batch_day
from batch.recompute import recompute_day
from ingestion.topics import ensure_topics, topic_plan
from lambdaflow import store
from lambdaflow.broker import EmbeddedBroker, free_port
from lambdaflow.kafka import KafkaConnection, source_options
from lambdaflow.kafka_source import broker_end_offsets
from lambdaflow.settings import load_settings
from lambdaflow.views import VIEWS
from tests import ground_truth
from tests.batch.test_recompute import assert_same, store_rows, topic_events
from tests.conftest import LAMBDAFLOW, ROOT, run_cli, settings_env
from tests.ingestion.test_archiver import assert_lake_matches_topics, lake_rows
from tests.kafka_helpers import consume_all
from tests.speed.test_streams import compare, store_frame

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
STREAM_KILLS, BROKER_RESTARTS, SERVING_KILLS = 10, 2, 1
WARM_UP_EVENTS = 100  # per topic, before the chaos
EVENTS, RATE = 4000, 25.0  # per topic: ~160 s of production, long enough for every kill
FAULTS = ["--duplicates", "0.05", "--late", "0.03", "--out-of-order", "0.1", "--malformed", "0.03"]
SPEED = {"sensor_stats": "iot_sensors", "location_stats": "iot_sensors", "activity_stats": "user_activity"}


class Chaos:
    """The processes under test, each restartable: the broker in this process, the others as commands."""

    def __init__(self, tmp_path) -> None:
        self.storage, self.port = tmp_path / "broker", free_port()
        self.broker = EmbeddedBroker("127.0.0.1", self.port, tmp_path / "broker.log", storage=self.storage)
        self.broker.start()
        self.settings = load_settings(
            data_dir=tmp_path / "data", kafka_bootstrap_servers=self.broker.bootstrap_servers,
            trigger_seconds=0.5, archive_trigger_seconds=1.0, serve_port=free_port(), stream_metrics_port=0,
        )  # fmt: skip
        ensure_topics(KafkaConnection.from_settings(self.settings), topic_plan(self.settings))
        self.env = {**settings_env(self.settings), "LAMBDAFLOW_STREAM_METRICS_PORT": "0",
                    "LAMBDAFLOW_SERVE_PORT": str(self.settings.serve_port)}  # fmt: skip
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.stream = self.serve = None
        self.summary: Counter[str] = Counter()

    def _start(self, command: list[str], name: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("a")
        return subprocess.Popen([*LAMBDAFLOW, *command], env=self.env, cwd=ROOT, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def start_stream(self) -> None:
        self.stream = self._start(["stream"], "stream")

    def start_serve(self) -> None:
        self.serve = self._start(["serve"], "serve")

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)  # a driver with its JVM and workers, or a server's workers
        process.wait()

    def kill_stream(self) -> None:
        self.kill(self.stream)
        self.summary["stream kills survived"] += 1
        self.start_stream()

    def restart_broker(self, kill_storage: bool) -> None:
        self.broker.process.kill()  # Tansu, SIGKILL
        if kill_storage:
            self.broker.object_store.process.kill()  # and SeaweedFS, SIGKILL
        self.broker.process.wait()
        self.broker.stop()  # whatever is left
        self.broker = EmbeddedBroker("127.0.0.1", self.port, self.logs / "broker.log", storage=self.storage)
        self.broker.start()
        self.summary["broker restarts survived"] += 1

    def kill_serve(self) -> None:
        self.kill(self.serve)
        self.start_serve()
        base = f"http://127.0.0.1:{self.settings.serve_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except urllib.error.HTTPError:  # 503 while the stream restarts: it answers
                break
            except OSError:
                assert time.monotonic() < deadline, "the serving app did not come back"
                time.sleep(0.5)
        self.summary["serving kills survived"] += 1

    def speed_has_seen_events(self) -> bool:
        engine = store.engine(self.settings.resolved_store_url, upgrade=False)
        try:
            with engine.connect() as connection:
                rows = connection.execute(select(store.stream_progress)).mappings().all()
        except Exception:  # the stream has not created the tables yet
            return False
        finally:
            engine.dispose()
        seen = {row["query"] for row in rows if row["max_event_ts"] is not None}
        return {"speed_iot_sensors", "speed_user_activity"} <= seen

    def close(self) -> None:
        for process in (self.stream, self.serve):
            if process is not None and process.poll() is None:
                self.kill(process)
        self.broker.stop()


@pytest.fixture
def chaos(tmp_path):
    running = Chaos(tmp_path)
    yield running
    running.close()


def test_chaos_loses_and_doubles_nothing(chaos, spark):
    settings, rng = chaos.settings, random.Random()
    chaos.start_stream()
    chaos.start_serve()
    # clean events first, so the speed layer's watermark stands before any late event arrives
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", str(WARM_UP_EVENTS), "--rate", "0"], chaos.env)
    deadline = time.monotonic() + 240
    while not chaos.speed_has_seen_events():
        assert chaos.stream.poll() is None and time.monotonic() < deadline, "the stream made no progress"
        time.sleep(0.5)

    producers = [
        subprocess.Popen([*LAMBDAFLOW, "produce", kind, "--count", str(EVENTS), "--rate", str(RATE), "--seed",
                          seed, *FAULTS], env=chaos.env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for kind, seed in (("iot", "101"), ("activity", "202"))
    ]  # fmt: skip
    actions = ["stream"] * STREAM_KILLS + ["broker"] * BROKER_RESTARTS + ["serve"] * SERVING_KILLS
    rng.shuffle(actions)
    for number, action in enumerate(actions):
        time.sleep(rng.uniform(4, 12))
        if action == "stream":
            chaos.kill_stream()
        elif action == "broker":
            chaos.restart_broker(kill_storage=chaos.summary["broker restarts survived"] == 0)
        else:
            chaos.kill_serve()
        print(f"chaos {number + 1}/{len(actions)}: {action}", flush=True)
    for producer in producers:
        _, stderr = producer.communicate(timeout=600)
        assert producer.returncode == 0, stderr[-3000:]

    chaos.stream.send_signal(signal.SIGTERM)  # drains what the broker holds, then stops
    assert chaos.stream.wait(timeout=300) == 0, (chaos.logs / "stream.log").read_text()[-3000:]
    run_cli(["stream", "--once"], chaos.env)  # anything a last kill left behind

    # what the broker holds, read back: a broker killed mid-write may leave an offset with no record (the
    # producer's retry sends that record again at a later offset), so end offsets overcount what exists
    sent = EVENTS + WARM_UP_EVENTS
    held = {topic: {r.coordinates for r in consume_all(settings.kafka_bootstrap_servers, topic, sent)}
            for topic in settings.topics}  # fmt: skip
    assert all(len(coordinates) >= sent for coordinates in held.values()), "the broker lost records sent"
    counts = {topic: len(coordinates) for topic, coordinates in held.items()}
    summary = _lake_summary(settings, held)
    summary.update(chaos.summary)
    print("chaos summary: " + ", ".join(f"{name} {value}" for name, value in summary.items()), flush=True)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "chaos.json").write_text(json.dumps(summary, indent=2) + "\n")
    assert summary["events lost"] == 0 and summary["events doubled"] == 0, summary
    assert summary["stream kills survived"] == STREAM_KILLS
    assert summary["broker restarts survived"] == BROKER_RESTARTS
    assert summary["serving kills survived"] == SERVING_KILLS
    assert_lake_matches_topics(settings, counts)

    frames = {contract: topic_events(settings, topic, contract, counts[topic])
              for topic, contract in ((settings.topic_iot, "iot_sensors"),
                                      (settings.topic_activity, "user_activity"))}  # fmt: skip
    watermark = timedelta(seconds=settings.watermark_seconds)
    uncertain = {c: ground_truth.late_windows(f, watermark) for c, f in frames.items()}
    settled = {c: f[~f["ts"].dt.floor("300s").isin(uncertain[c])] for c, f in frames.items()}
    for view, contract in SPEED.items():
        truth = ground_truth.VIEWS[view](ground_truth.clean_events(settled[contract]))
        actual = store_frame(settings, view)
        actual = actual[~actual["window_start"].isin(uncertain[contract])].reset_index(drop=True)
        compare(actual, truth, view)

    readings = ground_truth.clean_events(settled["iot_sensors"])
    expected = {("temperature_high", e) for e in readings.loc[readings.temperature > 30, "event_id"]} | {
        ("battery_low", e) for e in readings.loc[readings.battery < 20, "event_id"]
    }
    assert expected, "no alert in the simulated readings: the check below would prove nothing"
    with store.engine(settings.resolved_store_url).connect() as connection:
        rows = connection.execute(select(store.alerts)).mappings().all()
    iot = frames["iot_sensors"]
    unsettled = set(iot.loc[iot["ts"].dt.floor("300s").isin(uncertain["iot_sensors"]), "event_id"])
    stored = [(row["rule"], json.loads(row["event"])["event_id"]) for row in rows
              if row["rule"] in ("temperature_high", "battery_low")]  # fmt: skip
    stored = [alert for alert in stored if alert[1] not in unsettled]
    assert len(stored) == len(set(stored)) and set(stored) == expected

    engine = store.engine(settings.resolved_store_url)
    days = sorted({day for frame in frames.values() for day in frame["ts"].dt.date})
    for day in days:
        recompute_day(spark, settings, day)
        publish_batch_day(settings, day, force=True)  # today's lake is not complete: published on purpose
    for name, view in VIEWS.items():
        truth = ground_truth.concat_days(frames[view.contract], days, ground_truth.VIEWS[name])
        assert_same(store_rows(engine, store.BATCH_TABLES[name]), truth, list(view.keys))


def _lake_summary(settings, held: dict[str, set[tuple]]) -> dict[str, int]:
    """Events lost and doubled between the topics and the lake, by the Kafka coordinates of the records the
    broker holds (valid and invalid), and the offsets the broker left without a record."""
    lost = doubled = gaps = 0
    for topic, coordinates in held.items():
        landed = [(topic, row["_partition"], row["_offset"]) for kind in ("raw", "quarantine")
                  for row in lake_rows(settings, kind, topic)]  # fmt: skip
        doubled += len(landed) - len(set(landed))
        lost += len(coordinates - set(landed))
        gaps += sum(broker_end_offsets(source_options(settings), [topic]).values()) - len(coordinates)
    return {"records in the topics": sum(map(len, held.values())), "events lost": lost,
            "events doubled": doubled, "broker offsets without a record": gaps}  # fmt: skip
