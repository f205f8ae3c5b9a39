"""export_to_azure under Airflow's own retry handling: `airflow dags test` of a day with the DAG's other tasks
marked successful and the Azure connection in Airflow's metadata database holding a key the account refuses.
The first try fails with one line saying the credentials were refused and Airflow puts the task up for retry;
the connection is then corrected, and a later try of the same run exports the day."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.lake_backup import manifest_name
from lambdaflow.azure_blob import BlobStorageError
from lambdaflow.lake import day_dir, raw_dir
from lambdaflow.settings import Settings, load_settings
from tests.conftest import ROOT
from tests.dags.conftest import AIRFLOW, airflow

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path) -> Settings:
    """No broker: the export reads only the lake."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(data_dir=tmp_path / "data", topic_iot=f"iot_{suffix}",
                         topic_activity=f"activity_{suffix}")  # fmt: skip


def _import_connection(env: dict[str, str], conn_id: str, connection: str, folder: Path) -> None:
    """Write the Azure connection into Airflow's metadata database, replacing any of that id."""
    path = folder / f"connection-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps({conn_id: json.loads(connection)}))
    airflow(["connections", "import", str(path), "--overwrite"], env)


def _export_tries(database: Path) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """export_to_azure's earlier tries (try number, state) from Airflow's history, and its current one."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
        history = connection.execute(
            "SELECT try_number, state FROM task_instance_history WHERE task_id = 'export_to_azure' "
            "ORDER BY try_number"
        ).fetchall()
        current = connection.execute(
            "SELECT try_number, state FROM task_instance WHERE task_id = 'export_to_azure'"
        ).fetchone()
    return history, current


def test_wrong_credentials_fail_a_try_in_one_line_and_airflow_retries_the_export(
    settings, airflow_env, azurite, tmp_path
):
    day = (datetime.now(UTC) - timedelta(days=3)).date()
    folder = day_dir(raw_dir(settings.lake_dir.resolve(), settings.topic_iot), day)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"event_id": ["a", "b", "c"]}), folder / "part-0000000000-0000.parquet")

    conn_id = settings.azure_conn_id
    env = {k: v for k, v in airflow_env.items() if k != f"AIRFLOW_CONN_{conn_id.upper()}"}
    # the first retry's delay leaves time to correct the connection (Airflow adds up to as much again); a
    # second retry covers a correction that lands late on a loaded machine
    env.update(LAMBDAFLOW_BATCH_RETRIES="2", LAMBDAFLOW_BATCH_RETRY_DELAY_SECONDS="20")
    wrong_key = base64.b64encode(b"not the account key").decode()
    _import_connection(env, conn_id, azurite.airflow_connection(wrong_key), tmp_path)

    database = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    output = tmp_path / "dags-test.log"
    with output.open("w") as log:
        run = subprocess.Popen(
            [AIRFLOW, "dags", "test", "lambdaflow_batch", day.isoformat(),
             "--mark-success-pattern", "(?!export_to_azure$).+"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _export_tries(database)[1] != (1, "up_for_retry"):
            assert run.poll() is None, f"the run ended before a retry:\n{output.read_text()[-4000:]}"
            assert time.monotonic() < deadline, output.read_text()[-4000:]
            time.sleep(0.5)
        _import_connection(env, conn_id, azurite.airflow_connection(), tmp_path)
        returncode = run.wait(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = output.read_text()
    assert returncode == 0, text[-4000:]

    history, current = _export_tries(database)
    assert current is not None and current[1] == "success" and current[0] >= 2, (current, history)
    assert [number for number, _ in history] == list(range(1, current[0])), history  # each failed try
    # each failed try's log ends its traceback with the error: one line naming the account and the refusal
    refusals = [line for line in text.splitlines() if line.startswith(f"{BlobStorageError.__module__}.")]
    assert len(refusals) == len(history), text[-4000:]
    assert all(
        f"Azure Blob Storage ({conn_id}, container '" in line and "the credentials were refused (" in line
        for line in refusals
    ), refusals

    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(azurite.connection_string()).get_container_client(
        env["LAMBDAFLOW_AZURE_CONTAINER"]
    )
    names = {blob.name for blob in container.list_blobs()}
    raw_name = (folder / "part-0000000000-0000.parquet").relative_to(settings.data_dir.resolve()).as_posix()
    assert names == {raw_name, manifest_name(day)}
