"""Azure benchmark: export the 10-million-event day (its raw partitions, as `benchmarks.batch` writes them) to
Azurite through `export_day` (WasbHook, MD5s, files and blocks in parallel, the manifest last), beside the
same files uploaded one after another with the SDK's plain `upload_blob`, in the same run.

Each run goes to a fresh container, so every byte is sent; the baseline's container is another one. Importing
Airflow's Azure provider is left out, as in the DAG's task, whose worker has Airflow loaded already.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.batch import DAY, EVENTS_PER_TOPIC, TOPICS, write_day
from benchmarks.common import Result
from local_services.azurite import running_azurite

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CONN_ID = "lambdaflow_bench_azure"


def _plain_upload_seconds(connection_string: str, files: dict[str, Path]) -> float:
    from azure.storage.blob import BlobServiceClient

    started = time.monotonic()  # the export's time includes its client and creating its container too
    client = BlobServiceClient.from_connection_string(connection_string)
    container = client.create_container(f"plain-{uuid.uuid4().hex[:12]}")
    for name, path in files.items():
        with path.open("rb") as data:
            container.upload_blob(name, data, overwrite=True)
    elapsed = time.monotonic() - started
    container.delete_container()
    return elapsed


def run(selected: set[str]) -> list[Result]:
    del selected  # one group
    from batch.lake_backup import day_files, export_day
    from lambdaflow.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="lambdaflow-bench-azure-") as temporary:
        data_dir = Path(temporary) / "data"
        print(f"  writing a {2 * EVENTS_PER_TOPIC:,}-event day into the lake …", flush=True)
        write_day(data_dir / "lake")
        # the DAG's worker has Airflow loaded before the task runs: its import is not part of an export
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook  # noqa: F401

        with running_azurite(Path(temporary) / "azurite") as azurite:
            os.environ.update(azurite.env(CONN_ID))
            topics = {"topic_iot": TOPICS["iot_sensors"], "topic_activity": TOPICS["user_activity"]}
            settings = load_settings(data_dir=data_dir, azure_conn_id=CONN_ID, **topics)
            files = day_files(settings, DAY)
            total_mb = sum(path.stat().st_size for path in files.values()) / 1e6
            export_runs, plain_runs = [], []
            for run_number in range(RUNS):
                container = f"export-{uuid.uuid4().hex[:12]}"
                one_run = load_settings(**{**settings.model_dump(), "azure_container": container})
                started = time.monotonic()
                transfer = export_day(one_run, DAY)
                export_runs.append(total_mb / (time.monotonic() - started))
                assert transfer.sent == len(files), transfer
                plain_runs.append(total_mb / _plain_upload_seconds(azurite.connection_string(), files))
                from azure.storage.blob import BlobServiceClient

                BlobServiceClient.from_connection_string(azurite.connection_string()).delete_container(
                    container
                )
                print(f"  azure run {run_number + 1}: export {export_runs[-1]:.1f} MB/s, plain upload_blob "
                      f"{plain_runs[-1]:.1f} MB/s", flush=True)  # fmt: skip
    result = Result("azure: export the 10M-event day to Azurite", "MB/s", export_runs, "≥ plain upload_blob",
                    floor_runs=plain_runs)  # fmt: skip
    result.meets_target = result.median >= statistics.median(plain_runs)
    result.notes.update({
        "files, MB": f"{len(files)}, {total_mb:,.0f}",
        "includes": "MD5 and row count of every file, listing, uploads, the manifest",
        "floor": "the same files, one plain upload_blob after another, alternating with the export",
    })  # fmt: skip
    return [result]
