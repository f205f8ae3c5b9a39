"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME set before anything imports airflow."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, settings_env

_HOME = Path(tempfile.mkdtemp(prefix="lambdaflow-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
}
os.environ.update(AIRFLOW_ENV)
AIRFLOW = str(ROOT / ".venv" / "bin" / "airflow")


@pytest.fixture
def airflow_env(settings, tmp_path) -> dict[str, str]:
    """The environment of an `airflow` command for this test: its own metadata database (SQLite, migrated)
    and the test's lambdaflow settings."""
    env = {**settings_env(settings), **AIRFLOW_ENV, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    env["LAMBDAFLOW_BATCH_RETRIES"] = "0"  # a failure fails the test at once, not after the backoff
    airflow(["db", "migrate"], env)
    return env


def airflow(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    result = subprocess.run([AIRFLOW, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")  # fmt: skip
    return result
