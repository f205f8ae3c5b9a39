"""Shared fixtures: a real Tansu broker and a real local Spark session, started once per test session.

Each test gets its own topics (unique names through settings) and its own data directory, so tests share
the broker and Spark without sharing data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingestion.topics import ensure_topics, topic_plan
from lambdaflow.broker import EmbeddedBroker, free_port
from lambdaflow.kafka import KafkaConnection
from lambdaflow.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
LAMBDAFLOW = [sys.executable, "-m", "cli"]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One Tansu for the session, on memory storage: every test has its own topics and none needs them
    after the session (tests/lambdaflow/test_broker.py covers durable storage)."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker("127.0.0.1", free_port(), log_path=log, storage="memory") as running:
        yield running


@pytest.fixture
def make_settings(broker: EmbeddedBroker, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: its own topics on the shared broker and its own data directory."""

    def make(**overrides: object) -> Settings:
        suffix = uuid.uuid4().hex[:8]
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "kafka_bootstrap_servers": broker.bootstrap_servers,
            "topic_iot": f"iot_sensors_{suffix}",
            "topic_activity": f"user_activity_{suffix}",
            "topic_dead_letter": f"dead_letter_{suffix}",
            "topic_alerts": f"alerts_{suffix}",
            "trigger_seconds": 0.5,
            "archive_trigger_seconds": 0.5,
        }
        values.update(overrides)
        settings = load_settings(**values)
        ensure_topics(KafkaConnection.from_settings(settings), topic_plan(settings))
        return settings

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `lambdaflow` subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAFLOW_")}
    for name in (
        "data_dir", "kafka_bootstrap_servers", "topic_iot", "topic_activity", "topic_dead_letter",
        "topic_alerts", "trigger_seconds", "archive_trigger_seconds", "max_records_per_trigger",
        "topic_partitions",
    ):  # fmt: skip
        env[f"LAMBDAFLOW_{name.upper()}"] = str(getattr(settings, name))
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*LAMBDAFLOW, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"lambdaflow {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    from lambdaflow.spark import spark_session

    data_dir = tmp_path_factory.mktemp("spark")
    session = spark_session(load_settings(data_dir=data_dir), "lambdaflow-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory):
    """Azurite's Blob service for the session (local_services/azurite.py); each test uses its own
    container."""
    from local_services.azurite import running_azurite

    with running_azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A Spark standalone master and one worker on loopback (local_services/spark_cluster.py), for the
    session: a test tells its own applications by the ones registered after it started."""
    from local_services.spark_cluster import running_spark_cluster

    with running_spark_cluster(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster


def new_database(postgres_url: str, template: str | None = None, prefix: str = "lambdaflow") -> str:
    """A database of its own on the session's PostgreSQL (`postgres_url`), a copy of `template` if given;
    its URL."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f" TEMPLATE {template}" if template else ""
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}{copy}"))
    engine.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 (trust auth, its own data directory), for the session."""
    import getpass
    import shutil
    import time

    if shutil.which("initdb") is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    import tempfile

    # not under pytest's temporary root: that is private to root, and the server runs as 'postgres'
    base = Path(tempfile.mkdtemp(prefix="lambdaflow-postgres-"))
    data, sockets = base / "data", base / "sockets"
    sockets.mkdir()
    # initdb refuses to run as root: run the server as the 'postgres' user then
    as_user = ["runuser", "-u", "postgres", "--"] if getpass.getuser() == "root" else []
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run([*as_user, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [*as_user, "postgres", "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(sockets),
         "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    from sqlalchemy import create_engine, text

    deadline = time.monotonic() + 30
    while True:
        try:
            with create_engine(url).connect() as connection:
                connection.execute(text("select 1"))
            break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                raise
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(base, ignore_errors=True)
