"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME set before anything imports airflow."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.services import services as compose_services
from tests.conftest import ROOT, new_database, settings_env

_HOME = Path(tempfile.mkdtemp(prefix="lambdaflow-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
}
os.environ.update(AIRFLOW_ENV)
AIRFLOW = str(ROOT / ".venv" / "bin" / "airflow")


def migrate_metadata(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> None:
    """`airflow db migrate` of the metadata database at `database_url`, once for the session: each test
    gets a copy of it (SQLite) or a database made from it (PostgreSQL), not a migration of its own."""
    home = tmp_path_factory.mktemp("airflow-migrated")
    env = {
        **os.environ,
        **AIRFLOW_ENV,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
    }
    airflow(["db", "migrate"], env)


@pytest.fixture(scope="session")
def migrated_sqlite_metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite metadata database for the tests to copy."""
    path = tmp_path_factory.mktemp("airflow-sqlite") / "airflow.db"
    migrate_metadata(tmp_path_factory, f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres_metadata(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated metadata database on the session's PostgreSQL, the template of each test's; its name."""
    url = new_database(postgres_url, prefix="airflow_template")
    migrate_metadata(tmp_path_factory, url)
    return url.rsplit("/", 1)[1]


@pytest.fixture
def airflow_env(settings, tmp_path, azurite, migrated_sqlite_metadata) -> dict[str, str]:
    """The environment of an `airflow` command for this test: its own metadata database (SQLite, migrated),
    the test's lambdaflow settings, and the lake's Azure copy going to its own container on Azurite."""
    env = {**settings_env(settings), **AIRFLOW_ENV, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    env.update(azurite.env(settings.azure_conn_id), LAMBDAFLOW_AZURE_CONTAINER=f"dag-{uuid.uuid4().hex[:12]}")
    database = tmp_path / "airflow" / "airflow.db"
    database.parent.mkdir()
    shutil.copyfile(migrated_sqlite_metadata, database)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{database}"
    env["LAMBDAFLOW_BATCH_RETRIES"] = "0"  # a failure fails the test at once, not after the backoff
    return env


def airflow(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    result = subprocess.run([AIRFLOW, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")  # fmt: skip
    return result


@pytest.fixture
def lambdaflow_env() -> dict[str, str]:
    """More lambdaflow settings for the DAG's tasks (a module overrides it, e.g. to run them on a cluster)."""
    return {}


@pytest.fixture
def airflow_services(settings, postgres_url, migrated_postgres_metadata, tmp_path, lambdaflow_env):
    """A running Airflow (scheduler, DAG processor, API server for the task SDK; LocalExecutor) with its
    metadata on a throwaway PostgreSQL database, each component started with docker-compose.yaml's command
    for it (cli/services.py). Yields (env, metadata URL)."""
    import secrets
    import time

    from lambdaflow.broker import free_port

    metadata_url = new_database(postgres_url, template=migrated_postgres_metadata, prefix="airflow")
    port = free_port()
    env = {**settings_env(settings), **AIRFLOW_ENV, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    env.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "LAMBDAFLOW_BATCH_RETRIES": "0",
        # not shorter: Airflow 3.3 may fail a sensor re-queued (reschedule mode) before the scheduler has
        # processed its previous try's executor event
        "LAMBDAFLOW_BATCH_LAKE_POKE_SECONDS": "30",
        # no scheduled catch-up runs: the first interval starts today, so only backfills run
        "LAMBDAFLOW_BATCH_START_DATE": time.strftime("%Y-%m-%d", time.gmtime()),
    })  # fmt: skip
    env.update(lambdaflow_env)
    airflow(["dags", "reserialize"], env)
    components = ("api-server", "scheduler", "dag-processor")
    with running_airflow(env, components, tmp_path / "airflow-logs", f"http://127.0.0.1:{port}"):
        yield env, metadata_url


@contextlib.contextmanager
def running_airflow(
    env: dict[str, str], components: tuple[str, ...], logs: Path, base_url: str
) -> Iterator[None]:
    """Airflow's `components` (the API server first), each with docker-compose.yaml's command for it
    (cli/services.py) and its log in `logs`, running until the block ends; entered once the API server
    answers."""
    import signal
    import time
    import urllib.request

    logs.mkdir()
    commands = compose_services()
    services = [
        subprocess.Popen(commands[f"airflow-{component}"].local_command(), env=env, cwd=ROOT,
                         start_new_session=True, stdout=(logs / f"{component}.log").open("w"),
                         stderr=subprocess.STDOUT)
        for component in components
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # the API server answers once it is up
            try:
                urllib.request.urlopen(f"{base_url}/api/v2/monitor/health", timeout=2)
                break
            except OSError as exc:
                if time.monotonic() > deadline or any(s.poll() is not None for s in services):
                    tails = [(logs / f"{component}.log").read_text()[-2000:] for component in components[:2]]
                    raise AssertionError("Airflow did not start: " + " | ".join(tails)) from exc
                time.sleep(1)
        yield
    finally:
        for service in services:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGTERM)
        for service in services:
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
