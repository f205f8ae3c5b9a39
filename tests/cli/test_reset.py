"""`lambdaflow reset`: it empties the data directory but secrets/ (asking first), and refuses while `up`, a
broker on the storage, or a serving store outside the data directory would outlive it."""

import subprocess

import pytest

from cli.stack import single_instance
from lambdaflow.object_store import hold_storage
from tests.conftest import LAMBDAFLOW, ROOT, run_cli

pytestmark = pytest.mark.integration


def test_reset_removes_the_broker_storage_with_what_refers_to_its_offsets(tmp_path):
    data = tmp_path / "data"
    for path in ("broker/volumes/1.dat", "checkpoints/archiver/offsets/0", "lake/raw/x.parquet", "serving.db",
                 "airflow/airflow.db", "logs/broker.log", "status/archiver.json", "history/iot_sensors.json",
                 "secrets/api_token", "notes.txt"):  # fmt: skip
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_text("x")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(data)}

    asked = subprocess.run([*LAMBDAFLOW, "reset"], env=env, cwd=ROOT, input="n\n", capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert asked.returncode == 1
    assert "delete broker, checkpoints, lake, history, status, airflow, logs, serving.db in" in asked.stdout
    assert (data / "broker" / "volumes" / "1.dat").exists()

    done = run_cli(["reset", "--yes"], env, timeout=60)
    assert done.stderr.strip() == (
        f"reset {data}: removed broker, checkpoints, lake, history, status, airflow, logs, serving.db"
    )
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "secrets", "up.lock"]
    assert run_cli(["reset", "--yes"], env, timeout=60).stderr.strip() == f"nothing to reset in {data}"


def test_reset_refuses_while_anything_runs_on_the_data_dir(tmp_path):
    (tmp_path / "broker").mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(tmp_path)}
    with single_instance(tmp_path / "up.lock"):
        refused = run_cli(["reset", "--yes"], env, timeout=60, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("lambdaflow: not reset: lambdaflow is already running (pid ")
    lock = hold_storage(tmp_path / "broker", wait_s=0)
    try:
        refused = run_cli(["reset", "--yes"], env, timeout=60, check=False)
    finally:
        lock.close()
    assert refused.returncode == 1
    in_use = f"lambdaflow: not reset: the broker storage {tmp_path / 'broker'} is in use (unknown); stop that"
    assert refused.stderr.startswith(in_use)
    assert (tmp_path / "broker").is_dir()

    env["LAMBDAFLOW_STORE_URL"] = "postgresql://lambdaflow@127.0.0.1:1/lambdaflow"
    refused = run_cli(["reset", "--yes"], env, timeout=60, check=False)
    assert refused.returncode == 1
    assert "the serving store (LAMBDAFLOW_STORE_URL) is outside the data directory" in refused.stderr
    assert (tmp_path / "broker").is_dir()
