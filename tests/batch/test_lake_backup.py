"""The lake's copy in Azure Blob Storage, against Azurite: an export equals the lake (names, sizes, MD5s read
back with the SDK, not through lambdaflow), a second export uploads nothing, an export killed half-way leaves
no manifest and the next run completes it, restore checks every MD5, wrong credentials are one line and fail
the DAG's task (which retries), no connection skips it; and a restored day recomputes to the original's views
byte for byte."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.lake_backup import export_day, manifest_name, restore_day
from lambdaflow.azure_blob import BlobStorageError
from lambdaflow.lake import QUARANTINE_SCHEMA, day_dir, quarantine_dir, raw_dir, view_dir
from lambdaflow.settings import load_settings
from local_services.azurite import ACCOUNT_KEY
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration
DAY = date(2026, 5, 4)
CONN_ID = "lambdaflow_azure"


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _quarantine_table(rows: int, value_bytes: int = 64) -> pa.Table:
    """Quarantined records (random bytes: incompressible, so a file's size is what the test asks for)."""
    values = [os.urandom(value_bytes) for _ in range(rows)]
    now = datetime(2026, 5, 4, 12, tzinfo=UTC)
    columns = {
        "value": values, "key": [None] * rows, "reason": ["not JSON"] * rows, "_topic": ["t"] * rows,
        "_partition": [0] * rows, "_offset": list(range(rows)), "_kafka_ts": [now] * rows,
        "_ingested_at": [now] * rows,
    }  # fmt: skip
    return pa.table(columns, schema=QUARANTINE_SCHEMA)


def write_lake_day(settings, day: date = DAY, files: int = 3, value_bytes: int = 64) -> dict[str, Path]:
    """A day of Parquet files in every area the export copies, plus a file of another day and hidden files
    that must stay home; returns the files the export must hold, by their path under the data directory."""
    lake = settings.lake_dir
    expected = {}
    areas = [raw_dir(lake, settings.topic_iot), raw_dir(lake, settings.topic_activity),
             quarantine_dir(lake, settings.topic_dead_letter), view_dir(lake, "sensor_stats")]  # fmt: skip
    for area in areas:
        folder = day_dir(area, day)
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(files):
            path = folder / f"part-{number:010d}-0000.parquet"
            pq.write_table(_quarantine_table(10 + number, value_bytes), path)
            expected[path.relative_to(settings.data_dir.resolve()).as_posix()] = path
        (folder / f".part-x.{uuid.uuid4().hex}.tmp").write_bytes(b"half-written")
        (folder / "_SUCCESS").write_bytes(b"")
        other = day_dir(area, day - timedelta(days=1))
        other.mkdir(parents=True, exist_ok=True)
        pq.write_table(_quarantine_table(3), other / "part-0000000000-0000.parquet")
    # Data Docs as Great Expectations lays them out: the day's validation page and the shared pages go
    # with the day, another day's validation page stays home
    docs = settings.quality_dir / "data_docs"
    suite = docs / "validations" / "raw_iot"
    pages = [docs / "index.html", docs / "static" / "styles" / "site.css",
             suite / f"raw_iot-{day}" / "20260505T010203.000000Z" / "lambdaflow-raw_iot.html"]  # fmt: skip
    for path in [*pages, suite / f"raw_iot-{day - timedelta(days=1)}" / "20260504T010203.000000Z" / "x.html"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html>{path.name}</html>")
    for path in pages:
        expected[path.relative_to(settings.data_dir.resolve()).as_posix()] = path
    return expected


def container_blobs(azurite, container: str) -> dict[str, tuple[int, str | None, str]]:
    """Every blob of the container as Azure's SDK lists it: name -> (size, base64 MD5, etag)."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    found = {}
    for blob in client.get_container_client(container).list_blobs():
        md5 = blob.content_settings.content_md5
        found[blob.name] = (blob.size, base64.b64encode(md5).decode() if md5 else None, blob.etag)
    return found


@pytest.fixture
def backup_settings(tmp_path, azurite, monkeypatch):
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", azurite.airflow_connection())
    return load_settings(data_dir=tmp_path / "data", azure_container=f"lake-{uuid.uuid4().hex[:12]}",
                         topic_iot="iot", topic_activity="activity", topic_dead_letter="dead")  # fmt: skip


def _env(settings, azurite, key: str = ACCOUNT_KEY) -> dict[str, str]:
    """A `lambdaflow` subprocess's environment: this test's data directory, container and connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDAFLOW_", "AIRFLOW_CONN_"))}
    env.update(PYTHONPATH=str(ROOT), LAMBDAFLOW_DATA_DIR=str(settings.data_dir),
               LAMBDAFLOW_AZURE_CONTAINER=settings.azure_container)  # fmt: skip
    return {**env, **azurite.env(CONN_ID, key)}


def test_an_export_equals_the_lake_and_a_second_export_uploads_nothing(backup_settings, azurite):
    expected = write_lake_day(backup_settings)
    first = export_day(backup_settings, DAY)
    assert (first.files, first.sent) == (len(expected), len(expected))

    blobs = container_blobs(azurite, backup_settings.azure_container)
    assert set(blobs) == {*expected, manifest_name(DAY)}
    for name, path in expected.items():
        data = path.read_bytes()
        assert blobs[name][:2] == (len(data), _md5(data)), name
    manifest = json.loads(
        __import__("azure.storage.blob", fromlist=["BlobServiceClient"])
        .BlobServiceClient.from_connection_string(azurite.connection_string())
        .get_blob_client(backup_settings.azure_container, manifest_name(DAY))
        .download_blob()
        .readall()
    )
    assert {file["name"] for file in manifest["files"]} == set(expected)
    for file in manifest["files"]:
        path = expected[file["name"]]
        rows = pq.read_metadata(path).num_rows if path.suffix == ".parquet" else None
        assert (file["bytes"], file["md5"], file["rows"]) == (
            path.stat().st_size,
            _md5(path.read_bytes()),
            rows,
        )

    second = export_day(backup_settings, DAY)
    assert (second.files, second.sent, second.sent_bytes) == (len(expected), 0, 0)
    assert container_blobs(azurite, backup_settings.azure_container) == blobs, "a blob was written again"


def test_an_export_killed_half_way_has_no_manifest_and_the_next_run_completes_it(backup_settings, azurite):
    expected = write_lake_day(backup_settings, files=6, value_bytes=20_000)
    env = _env(backup_settings, azurite)
    # the export in its own process, SIGKILLed by itself as its fourth upload finishes (others in flight)
    killer = (
        "import os, signal, threading\n"
        "from lambdaflow import azure_blob\n"
        "upload, done, lock = azure_blob.BlobContainer.upload_file, [0], threading.Lock()\n"
        "def counted(self, *args):\n"
        "    upload(self, *args)\n"
        "    with lock:\n"
        "        done[0] += 1\n"
        "        if done[0] == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
        "azure_blob.BlobContainer.upload_file = counted\n"
        "from cli.main import main; main()\n"
    )
    cut = subprocess.run([sys.executable, "-c", killer, "export", "--date", str(DAY)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-2000:]
    blobs = container_blobs(azurite, backup_settings.azure_container)
    assert manifest_name(DAY) not in blobs
    assert 4 <= len(blobs) < len(expected)

    result = run_cli(["export", "--date", str(DAY)], env)
    assert f"of {len(expected)} files" in result.stderr
    done = container_blobs(azurite, backup_settings.azure_container)
    assert set(done) == {*expected, manifest_name(DAY)}
    for name, path in expected.items():
        assert done[name][:2] == (path.stat().st_size, _md5(path.read_bytes())), name
    complete_before = {name for name, blob in blobs.items() if blob[1] == _md5(expected[name].read_bytes())}
    assert all(done[name][2] == blobs[name][2] for name in complete_before), "a complete blob was sent again"


def test_restore_lays_the_day_into_a_lake_and_refuses_a_blob_whose_md5_differs(backup_settings, azurite,
                                                                              tmp_path):  # fmt: skip
    expected = write_lake_day(backup_settings)
    export_day(backup_settings, DAY)
    restored = tmp_path / "restored"
    transfer = restore_day(backup_settings, DAY, restored)
    master = {
        name: path for name, path in expected.items() if name.startswith(("lake/raw/", "lake/quarantine/"))
    }
    assert transfer.sent == len(master)
    files = {p.relative_to(restored).as_posix() for p in restored.rglob("*") if p.is_file()}
    assert files == set(master)
    assert all((restored / name).read_bytes() == path.read_bytes() for name, path in master.items())

    # a blob changed behind the manifest's back: one line, and nothing of it lands in the lake
    from azure.storage.blob import BlobServiceClient

    victim = sorted(master)[0]
    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    client.get_blob_client(backup_settings.azure_container, victim).upload_blob(b"tampered", overwrite=True)
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(BlobStorageError, match="differs from the manifest") as refused:
        restore_day(backup_settings, DAY, elsewhere)
    assert "\n" not in str(refused.value)
    assert not (elsewhere / victim).exists()
    assert not [p for p in (elsewhere / victim).parent.glob(".*")], "a temporary file was left behind"


def test_restore_refuses_a_manifest_naming_a_file_outside_the_lake(backup_settings, azurite, tmp_path):
    from azure.storage.blob import BlobServiceClient

    write_lake_day(backup_settings)
    export_day(backup_settings, DAY)
    client = BlobServiceClient.from_connection_string(azurite.connection_string())
    manifest = client.get_blob_client(backup_settings.azure_container, manifest_name(DAY))
    content = json.loads(manifest.download_blob().readall())
    content["files"][0]["name"] = "lake/raw/../../outside.parquet"
    manifest.upload_blob(json.dumps(content).encode(), overwrite=True)
    restored = tmp_path / "restored"
    with pytest.raises(BlobStorageError, match="outside the lake; nothing was restored"):
        restore_day(backup_settings, DAY, restored)
    assert not (tmp_path / "outside.parquet").exists()
    assert not [path for path in restored.rglob("*") if path.is_file()]


def test_wrong_credentials_or_no_connection_are_one_line_and_the_task_fails_or_is_skipped(
    backup_settings, azurite, monkeypatch
):
    from airflow.sdk.exceptions import AirflowSkipException

    from batch import tasks

    write_lake_day(backup_settings)
    wrong_key = base64.b64encode(b"not the account key").decode()
    result = run_cli(["export", "--date", str(DAY)], _env(backup_settings, azurite, wrong_key), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("lambdaflow: Azure Blob Storage") and "credentials were refused" in lines[0]

    unset = {k: v for k, v in _env(backup_settings, azurite).items() if not k.startswith("AIRFLOW_CONN_")}
    for command in ("export", "restore"):
        result = run_cli([command, "--date", str(DAY)], unset, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "no Airflow connection 'lambdaflow_azure'" in lines[0]
    result = run_cli(["restore", "--date", str(DAY)], _env(backup_settings, azurite), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "was never exported completely" in lines[0]

    env = {"LAMBDAFLOW_DATA_DIR": str(backup_settings.data_dir),
           "LAMBDAFLOW_AZURE_CONTAINER": backup_settings.azure_container}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", azurite.airflow_connection(wrong_key))
    with pytest.raises(BlobStorageError, match="credentials were refused"):  # fails: Airflow retries it
        tasks.export_to_azure(str(DAY))
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    monkeypatch.setenv("LAMBDAFLOW_AZURE_CONN_ID", "lambdaflow_azure_unset")
    with pytest.raises(AirflowSkipException, match="no Airflow connection 'lambdaflow_azure_unset'"):
        tasks.export_to_azure(str(DAY))


def _view_files(lake: Path, day: date) -> dict[str, list[str]]:
    """Each batch output's files of the day as their MD5s (Spark names its part files afresh each run)."""
    found = {}
    for folder in sorted((lake / "views").iterdir()):
        files = sorted(p for p in day_dir(folder, day).iterdir() if not p.name.startswith((".", "_")))
        found[folder.name] = sorted(_md5(path.read_bytes()) for path in files)
    return found


def test_a_restored_day_recomputes_to_the_original_views_byte_for_byte(
    spark, make_settings, azurite, tmp_path, monkeypatch
):
    from batch.recompute import recompute_day
    from ingestion.archiver import start_archiver
    from tests.conftest import settings_env

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", azurite.airflow_connection())
    settings = make_settings(azure_container=f"lake-{uuid.uuid4().hex[:12]}")
    day = (datetime.now(UTC) - timedelta(days=2)).date()
    env = settings_env(settings)
    for kind in ("iot", "activity"):
        run_cli(["produce", kind, "--count", "1500", "--rate", "1", "--start", f"{day}T08:00:00Z",
                 "--seed", "5", "--duplicates", "0.05", "--out-of-order", "0.1"], env)  # fmt: skip
    archiver = start_archiver(spark, settings, once=True)
    archiver.awaitTermination()
    assert archiver.exception() is None
    recompute_day(spark, settings, day)
    original = _view_files(settings.lake_dir, day)
    assert original and all(original.values())
    export_day(settings, day)

    restored = make_settings(data_dir=tmp_path / "restored", topic_iot=settings.topic_iot,
                             topic_activity=settings.topic_activity,
                             topic_dead_letter=settings.topic_dead_letter,
                             azure_container=settings.azure_container)  # fmt: skip
    transfer = restore_day(restored, day)
    assert transfer.sent == transfer.files > 0
    recompute_day(spark, restored, day)
    assert _view_files(restored.lake_dir, day) == original
