"""The embedded stack's Airflow API server, its metadata on SQLite, creates every backfill asked of it while
another process commits to the database all the time (as the scheduler and the DAG processor do, here more
often than they do: with the replay alone most backfills were refused). First the plugin's transactions on
a SQLite file: a savepoint that opens one holds the write lock from its start to its end."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from cli.airflow_plugins.locked_writes import WRITE_REQUEST, listen_for_savepoints
from cli.stack import Credential, airflow_env
from lambdaflow.broker import free_port
from lambdaflow.settings import load_settings
from tests.conftest import ROOT, settings_env
from tests.dags.conftest import airflow, running_airflow

BACKFILLS = 20


def write_now(database: Path) -> None:
    """A commit by another process, refused at once if the write lock is held."""
    with contextlib.closing(sqlite3.connect(database, timeout=0)) as other, other:
        other.execute("INSERT INTO runs VALUES ('other')")


def names(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as reader:
        return sorted(name for (name,) in reader.execute("SELECT name FROM runs"))


@pytest.fixture
def runs_database(tmp_path) -> Path:
    database = tmp_path / "metadata.db"
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE runs (name TEXT)")
    listen_for_savepoints()
    return database


def test_outside_a_write_request_a_savepoint_that_reads_then_writes_is_refused(runs_database):
    engine = create_engine(f"sqlite:///{runs_database}")
    refused = pytest.raises(OperationalError, match="database is locked")
    with engine.connect() as connection, connection.begin(), refused, connection.begin_nested():
        connection.execute(text("SELECT count(*) FROM runs")).scalar_one()
        write_now(runs_database)
        connection.execute(text("INSERT INTO runs VALUES ('day 1')"))
    assert names(runs_database) == ["other"]


def test_in_a_write_request_each_savepoint_holds_the_lock_from_its_start_to_its_end(runs_database):
    engine = create_engine(f"sqlite:///{runs_database}")
    token = WRITE_REQUEST.set(True)
    try:
        with engine.connect() as connection, connection.begin():
            for day in ("day 1", "day 2"):  # as Airflow creates a backfill's runs
                with connection.begin_nested():
                    connection.execute(text("SELECT count(*) FROM runs")).scalar_one()
                    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                        write_now(runs_database)
                    connection.execute(text("INSERT INTO runs VALUES (:day)"), {"day": day})
                # committed at the release, before the outer transaction ends: another process writes at once
                write_now(runs_database)
            with pytest.raises(ValueError), connection.begin_nested():  # a run rolled back to its savepoint
                connection.execute(text("INSERT INTO runs VALUES ('day 3')"))
                raise ValueError("the run exists")
            write_now(runs_database)
            assert names(runs_database) == ["day 1", "day 2", "other", "other", "other"]
    finally:
        WRITE_REQUEST.reset(token)


def call(url: str, token: str = "", method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers=headers)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class Committer(threading.Thread):
    """Commits a row to the metadata database every millisecond, as another Airflow process would."""

    def __init__(self, database: Path) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.stop = threading.Event()
        self.commits = 0

    def run(self) -> None:
        connection = sqlite3.connect(self.database, timeout=30)
        connection.execute("CREATE TABLE IF NOT EXISTS lambdaflow_ticks (at REAL)")
        while not self.stop.is_set():
            with connection:
                connection.execute("INSERT INTO lambdaflow_ticks VALUES (?)", (time.time(),))
            self.commits += 1
            time.sleep(0.001)
        connection.close()


@pytest.fixture
def api_server(tmp_path, migrated_sqlite_metadata):
    """The API server alone, with the embedded stack's Airflow configuration; yields (URL, bearer token, the
    metadata database's path)."""
    secrets_ = {name: Credential(f"test-{name}", False, "environment")
                for name in ("api_token", "airflow_password", "jwt_secret")}  # fmt: skip
    settings = load_settings(data_dir=tmp_path / "data", airflow_port=free_port())
    env = {**settings_env(settings), **airflow_env(settings, ROOT, secrets_)}
    env["LAMBDAFLOW_BATCH_START_DATE"] = (datetime.now(UTC).date() - timedelta(days=30)).isoformat()
    database = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    database.write_bytes(migrated_sqlite_metadata.read_bytes())
    airflow(["dags", "reserialize"], env)
    url = env["AIRFLOW__API__BASE_URL"]
    with running_airflow(env, ("api-server",), tmp_path / "airflow-logs", url):
        credentials = {"username": "admin", "password": secrets_["airflow_password"].value}
        status, token = call(url + "/auth/token", method="POST", body=credentials)
        assert status in (200, 201), token
        yield url, token["access_token"], database


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_every_backfill_is_created_while_another_process_commits(api_server):
    url, token, database = api_server
    status, dag = call(url + "/api/v2/dags/lambdaflow_batch", token, "PATCH", {"is_paused": False})
    assert status == 200, dag
    committer = Committer(database)
    committer.start()
    refused, days = [], set()
    try:
        today = datetime.now(UTC).date()
        for n in range(BACKFILLS):
            day = today - timedelta(days=2 + n)
            days.add(day.isoformat())
            status, backfill = call(url + "/api/v2/backfills", token, "POST", {
                "dag_id": "lambdaflow_batch", "from_date": f"{day}T00:00:00Z", "to_date": f"{day}T00:00:00Z",
                "reprocess_behavior": "completed", "max_active_runs": 1,
            })  # fmt: skip
            if status != 200:
                refused.append((status, backfill))
                continue
            # a DAG has one backfill at a time: cancel it so that the next can be created
            status, cancelled = call(url + f"/api/v2/backfills/{backfill['id']}/cancel", token, "PUT")
            assert status == 200 and cancelled["completed_at"], cancelled
    finally:
        committer.stop.set()
        committer.join()
    assert committer.commits > BACKFILLS
    assert not refused, f"{len(refused)} of {BACKFILLS} backfills refused: {refused[0]}"
    status, runs = call(url + "/api/v2/dags/lambdaflow_batch/dagRuns?run_type=backfill&limit=100", token)
    assert status == 200, runs
    assert sorted(run["logical_date"][:10] for run in runs["dag_runs"]) == sorted(days)
