"""`lambdaflow up` (what `make run` starts): demo data flows into the lake and, within seconds, out of the
API with `source: speed`; Airflow answers with the admin password; every server listens on 127.0.0.1 only;
one instance; Ctrl-C stops all, draining first; and Ctrl-C then `up` again loses and doubles nothing."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from cli.stack import DEMO_FAULTS
from ingestion.faults import Faults
from ingestion.history import HistoryPlan, history_events, history_records, plan_history, read_marker
from lambdaflow import store
from lambdaflow.broker import EmbeddedBroker, free_port
from lambdaflow.kafka import source_options
from lambdaflow.kafka_source import broker_end_offsets
from lambdaflow.lake import raw_dir
from lambdaflow.settings import load_settings
from tests import ground_truth
from tests.batch.test_recompute import topic_events
from tests.conftest import LAMBDAFLOW, ROOT, run_cli
from tests.ingestion.test_archiver import assert_lake_matches_topics
from tests.oracle import is_valid
from tests.speed.test_streams import compare, store_frame

pytestmark = pytest.mark.integration
RESTART_FAULTS = ["--duplicates", "0.05", "--late", "0.03", "--out-of-order", "0.1", "--malformed", "0.03"]


def stack_env(data_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAFLOW_")}
    env.update(
        PYTHONPATH=str(ROOT),
        LAMBDAFLOW_DATA_DIR=str(data_dir),
        LAMBDAFLOW_BROKER_PORT=str(free_port()),
        LAMBDAFLOW_TRIGGER_SECONDS="0.5",
        LAMBDAFLOW_ARCHIVE_TRIGGER_SECONDS="0.5",
        LAMBDAFLOW_SERVE_PORT=str(free_port()),
        LAMBDAFLOW_AIRFLOW_PORT=str(free_port()),
        LAMBDAFLOW_AIRFLOW_PASSWORD="airflow-test-password",
        LAMBDAFLOW_STREAM_METRICS_PORT="0",
        LAMBDAFLOW_DEMO_HISTORY_DAYS="0",  # the tests of the history ask for it
    )
    return env


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def marker_reaches_the_api(env: dict[str, str], data_dir) -> float:
    """Produce a reading of a new sensor; return the seconds until the API serves it from the speed layer."""
    base = f"http://127.0.0.1:{env['LAMBDAFLOW_SERVE_PORT']}"
    token = (data_dir / "secrets" / "api_token").read_text().strip()
    sensor = f"marker-{uuid.uuid4().hex[:8]}"
    reading = {"event_id": str(uuid.uuid4()), "sensor_id": sensor, "location": "lab", "temperature": 22.5,
               "humidity": 40.0, "pressure": 1000.0, "battery": 90.0,
               "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}  # fmt: skip
    source = data_dir / "marker.jsonl"
    source.write_text(json.dumps(reading) + "\n")
    assert get(f"{base}/api/v1/sensors")[0] == 401, "the API answered without the token"
    sent = time.monotonic()
    broker = f"127.0.0.1:{env['LAMBDAFLOW_BROKER_PORT']}"
    run_cli(["produce", "--from-file", str(source), "--topic", "iot_sensors"],
            {**env, "LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS": broker})  # fmt: skip
    while time.monotonic() - sent < 60:
        status, body = get(f"{base}/api/v1/sensors/{sensor}/metrics", token)
        if status == 200 and body["points"]:
            point = body["points"][0]
            assert point["source"] == "speed" and point["events"] == 1 and point["temperature_avg"] == 22.5
            return time.monotonic() - sent
        assert status in (200, 404), body
        time.sleep(0.25)
    raise AssertionError(f"the reading of {sensor} was not served within 60 s")


def airflow_answers(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            status, health = get(f"{base}/api/v2/monitor/health")
            if status == 200 and health["scheduler"]["status"] == "healthy":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "Airflow's API server did not become healthy"
        time.sleep(1)
    credentials = json.dumps({"username": "admin", "password": "airflow-test-password"}).encode()
    login = urllib.request.Request(f"{base}/auth/token", method="POST", data=credentials,
                                   headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(login, timeout=10) as response:
        token = json.loads(response.read())["access_token"]
    deadline = time.monotonic() + 120
    while True:
        status, dags = get(f"{base}/api/v2/dags", token)
        if status == 200 and [d["dag_id"] for d in dags["dags"]] == ["lambdaflow_batch"]:
            return
        assert time.monotonic() < deadline, f"the DAG was not loaded: {status} {dags}"
        time.sleep(2)


def speed_progress(data_dir) -> dict[str, dict]:
    """Each speed query's progress row in the store, once the stream has created its tables."""
    engine = store.engine(f"sqlite:///{data_dir / 'serving.db'}", upgrade=False)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(store.stream_progress)).mappings().all()
    except DBAPIError:
        rows = []
    finally:
        engine.dispose()
    return {row["query"]: dict(row) for row in rows}


def start_stack(env: dict[str, str]) -> subprocess.Popen:
    """`up --no-demo`, once both speed queries of this run have reported."""
    started = datetime.now(UTC).replace(tzinfo=None)
    stack = subprocess.Popen([*LAMBDAFLOW, "up", "--no-demo"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    data_dir, deadline = Path(env["LAMBDAFLOW_DATA_DIR"]), time.monotonic() + 240
    while True:
        progress = speed_progress(data_dir)
        reported = {name for name, row in progress.items() if row["updated_at"] > started}
        if {"speed_iot_sensors", "speed_user_activity"} <= reported:
            return stack
        assert stack.poll() is None, stack.stdout.read()
        assert time.monotonic() < deadline, "the stream of `lambdaflow up` made no progress"
        time.sleep(0.5)


def stop_stack(stack: subprocess.Popen) -> str:
    stack.send_signal(signal.SIGINT)
    output, _ = stack.communicate(timeout=240)
    assert "drained: every query processed what the broker held" in output, output[-4000:]
    return output


def test_ctrl_c_then_up_again_loses_and_doubles_nothing(tmp_path):
    """Half the events, Ctrl-C of `lambdaflow up`, `up` again (the broker keeps its records on disk), the
    other half: every valid record is in the lake once, the quarantine holds every invalid one, and the
    speed views equal the pandas ground truth of the topics (in the windows no late event falls in)."""
    env = stack_env(tmp_path)
    broker = f"127.0.0.1:{env['LAMBDAFLOW_BROKER_PORT']}"
    produce_env = {**env, "LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS": broker}

    def produce(seed: int) -> None:
        for kind in ("iot", "activity"):
            run_cli(["produce", kind, "--count", "1500", "--rate", "500", "--seed", str(seed + len(kind)),
                     *RESTART_FAULTS], produce_env)  # fmt: skip

    stack = start_stack(env)
    try:
        for kind in ("iot", "activity"):  # in-time events first: each speed query's watermark stands
            run_cli(["produce", kind, "--count", "50", "--rate", "0"], produce_env)
        deadline = time.monotonic() + 120
        queries = ("speed_iot_sensors", "speed_user_activity")
        while not all((speed_progress(tmp_path).get(name) or {}).get("max_event_ts") for name in queries):
            assert time.monotonic() < deadline, "the speed layer saw no event"
            time.sleep(0.5)
        produce(seed=10)
    finally:
        stop_stack(stack)
    stack = start_stack(env)
    try:
        produce(seed=20)
    finally:
        stop_stack(stack)

    settings = load_settings(data_dir=tmp_path)
    with EmbeddedBroker("127.0.0.1", free_port(), storage=settings.broker_dir) as reopened:
        settings = load_settings(data_dir=tmp_path, kafka_bootstrap_servers=reopened.bootstrap_servers)
        counts = {topic: sum(broker_end_offsets(source_options(settings), [topic]).values())
                  for topic in settings.topics}  # fmt: skip
        assert counts == {settings.topic_iot: 50 + 2 * 1500, settings.topic_activity: 50 + 2 * 1500}
        assert_lake_matches_topics(settings, counts)
        for view, topic, contract in (
            ("sensor_stats", settings.topic_iot, "iot_sensors"),
            ("location_stats", settings.topic_iot, "iot_sensors"),
            ("activity_stats", settings.topic_activity, "user_activity"),
        ):
            events = topic_events(settings, topic, contract, counts[topic])
            uncertain = ground_truth.late_windows(events, timedelta(seconds=settings.watermark_seconds))
            truth = ground_truth.VIEWS[view](
                ground_truth.clean_events(events[~events["ts"].dt.floor("300s").isin(uncertain)])
            )
            actual = store_frame(settings, view)
            compare(actual[~actual["window_start"].isin(uncertain)].reset_index(drop=True), truth, view)


def history_in_lake(settings, plans: dict[str, HistoryPlan]) -> dict[str, Counter] | None:
    """Per topic, how many lake rows each history event_id has (None while the archiver moves a file)."""
    found = {}
    for topic, plan in plans.items():
        wanted = {event["event_id"] for event in history_events(plan)}
        ids: list[str] = []
        for path in sorted(raw_dir(settings.lake_dir, topic).glob("date=*/*.parquet")):
            if path.name.startswith((".", "_")):
                continue  # the archiver's temporary files
            try:
                ids += pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist()
            except FileNotFoundError:
                return None
        found[topic] = Counter(event_id for event_id in ids if event_id in wanted)
    return found


def wait_for_banner(stack: subprocess.Popen, log_path: Path, timeout_s: float = 180) -> None:
    """Until `up` printed its banner: a SIGINT before it may not stop `up`."""
    deadline = time.monotonic() + timeout_s
    while "lambdaflow is up" not in log_path.read_text():
        assert stack.poll() is None, log_path.read_text()[-4000:]
        assert time.monotonic() < deadline, "no banner from `lambdaflow up`"
        time.sleep(1)


def stop_up(stack: subprocess.Popen, timeout_s: float = 240) -> None:
    """Ctrl-C `up`; kill what is left of it if it overstays."""
    children = psutil.Process(stack.pid).children(recursive=True)
    stack.send_signal(signal.SIGINT)
    try:
        stack.wait(timeout=timeout_s)
    finally:
        for process in [*children, psutil.Process(stack.pid)] if stack.poll() is None else children:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_up_runs_the_stack_sends_the_history_once_and_stops_cleanly(tmp_path):
    """The first `up` on a fresh directory sends a day of history through the demo producers, with their
    fault mix, before their live events (the lake holds each valid history record once), and the DAG starts on
    that day (paused, as LAMBDAFLOW_DEMO_DAG_UNPAUSED=false asks); the same running stack serves a reading
    produced from the speed layer, Airflow answers with the admin password, every server listens on 127.0.0.1
    only, a second `up` is refused, and Ctrl-C stops every process. A second `up` on the same directory says
    the history was sent and sends none of it again."""
    env = {**stack_env(tmp_path), "LAMBDAFLOW_DEMO_HISTORY_DAYS": "1", "LAMBDAFLOW_DEMO_HISTORY_SECONDS": "5",
           "LAMBDAFLOW_DEMO_DAG_UNPAUSED": "false"}  # fmt: skip
    settings = load_settings(data_dir=tmp_path)
    today = datetime.now(UTC).date()
    plans = {
        settings.topic_iot: plan_history("iot", today, 1),
        settings.topic_activity: plan_history("activity", today, 1),
    }
    faults = Faults(**DEMO_FAULTS, watermark=timedelta(seconds=settings.watermark_seconds))
    expected = {}
    for topic, plan in plans.items():
        records, _ = history_records(plan, faults)
        contract = settings.topic_contracts[topic]
        now = datetime.now(UTC)
        expected[topic] = Counter(json.loads(value)["event_id"] for _, value in records
                                  if is_valid(contract, value, now))  # fmt: skip
    command = [*LAMBDAFLOW, "up", "--iot-rate", "5", "--activity-rate", "5"]
    outputs, archived_before = [], 0
    for attempt in ("first", "second"):
        log_path = tmp_path / f"up-{attempt}.log"
        with log_path.open("w") as log:
            stack = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_banner(stack, log_path)
            deadline = time.monotonic() + 240
            while history_in_lake(settings, plans) != expected or archived_valid(tmp_path) <= archived_before:
                assert stack.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, f"{attempt} up: history or live events not in the lake"
                time.sleep(1)
            # a producer sends its history, if any, before its live events: once both simulate live events, a
            # history sent again would be in this run's output
            live = ("simulating iot with seed", "simulating activity with seed")
            while not all(line in log_path.read_text() for line in live):
                assert stack.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, f"{attempt} up: the producers simulate no live events"
                time.sleep(0.5)
            if attempt == "first":
                markers = {topic: read_marker(tmp_path, topic) for topic in plans}
                children = the_running_stack_answers(stack, env, tmp_path)
                dag = airflow_get(
                    int(env["LAMBDAFLOW_AIRFLOW_PORT"]), "/api/v2/dags/lambdaflow_batch/details"
                )
                assert dag["is_paused"] is True and dag["start_date"].startswith(
                    str(plans[settings.topic_iot].first_day)
                )
            # a producer sends its history before its live events: a history sent again would be in the
            # lake before this run's live events
            archived_before = archived_valid(tmp_path)
        finally:
            stop_up(stack, timeout_s=90 if attempt == "first" else 240)
        outputs.append(log_path.read_text())
        if attempt == "first":
            assert "lambdaflow is up" in outputs[0]
            _, alive = psutil.wait_procs(children, timeout=30)
            assert not alive, f"processes left running after Ctrl-C: {[p.name() for p in alive]}"
    first, second = outputs
    day = plans[settings.topic_iot].first_day
    assert (
        f"1 day of history ({day} … {day}): publishing {sum(p.events for p in plans.values()):,} events"
        in first
    )
    assert f"history {day} … {day}: iot_sensors: sent" in first
    # the second start passes no history to the producers: none sends it or says it is sending it
    assert "sent by an earlier start" in second and "--history-days" not in second
    assert f"history {day}" not in second and ": publishing" not in second
    assert {topic: read_marker(tmp_path, topic) for topic in plans} == markers
    assert all(
        marker.first_day == day and marker.records > plans[topic].events for topic, marker in markers.items()
    )
    assert history_in_lake(settings, plans) == expected
    assert (tmp_path / "airflow").is_dir()


def the_running_stack_answers(stack: subprocess.Popen, env: dict[str, str], data_dir: Path) -> list:
    """Both topics archived, a reading served from the speed layer (twice), Airflow up with its DAG, every
    server on loopback, a second `up` refused, Spark under the stack; return the stack's processes."""
    status = data_dir / "status" / "archiver.json"
    deadline = time.monotonic() + 180
    archived = {}
    while time.monotonic() < deadline and not (len(archived) == 2 and all(archived.values())):
        assert stack.poll() is None
        if status.exists():
            archived = {t: s["valid"] for t, s in json.loads(status.read_text())["topics"].items()}
        time.sleep(0.5)
    assert set(archived) == {"iot_sensors", "user_activity"} and all(archived.values()), archived
    for attempt in ("first", "second"):
        seconds = marker_reaches_the_api(env, data_dir)
        print(f"{attempt} reading produced: served with source=speed after {seconds:.1f} s")
    airflow_answers(int(env["LAMBDAFLOW_AIRFLOW_PORT"]))
    pids = {stack.pid, *(p.pid for p in psutil.Process(stack.pid).children(recursive=True))}
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids}  # fmt: skip
    served = {int(env["LAMBDAFLOW_SERVE_PORT"]), int(env["LAMBDAFLOW_AIRFLOW_PORT"])}
    assert served <= {port for _, port in listening}, listening
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}  # the JVM lists IPv4 loopback as IPv6-mapped
    assert {ip for ip, _ in listening} <= loopback, f"a server listens beyond localhost: {listening}"

    second = run_cli(["up"], env, timeout=60, check=False)
    assert second.returncode == 1
    assert len(second.stderr.strip().splitlines()) == 1
    assert "lambdaflow is already running" in second.stderr
    children = psutil.Process(stack.pid).children(recursive=True)
    assert any("java" in child.name() for child in children), "no Spark JVM under the stack"
    return children


def archived_valid(data_dir) -> int:
    """How many valid records the archiver has landed in the lake, on both topics."""
    path = data_dir / "status" / "archiver.json"
    if not path.exists():
        return 0
    return sum(topic["valid"] for topic in json.loads(path.read_text())["topics"].values())


def airflow_get(port: int, path: str) -> dict:
    base = f"http://127.0.0.1:{port}"
    credentials = json.dumps({"username": "admin", "password": "airflow-test-password"}).encode()
    login = urllib.request.Request(f"{base}/auth/token", method="POST", data=credentials,
                                   headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(login, timeout=10) as response:
        token = json.loads(response.read())["access_token"]
    status, body = get(base + path, token)
    assert status == 200, body
    return body


STUBBORN_MANAGER = """
from cli.stack import StagedManager
manager = StagedManager([(("stubborn",), 120.0)], alone=frozenset())
manager.add_process("stubborn", "trap '' TERM; sleep 300 & wait")
manager.loop()
"""


def test_a_second_ctrl_c_stops_at_once_what_the_first_lets_drain():
    """The first SIGINT gives a process its stage's patience; a second kills it rather than wait that out."""
    manager = subprocess.Popen([sys.executable, "-c", STUBBORN_MANAGER], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        time.sleep(2)  # honcho's handlers are in place once the process started
        manager.send_signal(signal.SIGINT)
        time.sleep(2)
        assert manager.poll() is None, "a process that ignores SIGTERM was not given its patience"
        manager.send_signal(signal.SIGINT)
        output, _ = manager.communicate(timeout=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(manager.pid, signal.SIGKILL)
    assert "SIGINT again: stopping everything at once" in output, output
    assert "sending SIGKILL to stubborn" in output, output
